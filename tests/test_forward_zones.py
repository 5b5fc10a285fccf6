"""Conditional forwarding end to end: real NSDs per zone, a real `heimdall serve`, dnspython clients.

The default upstream is the session's NSD (example.test, bench.test). Two
more NSDs serve the zones only they have: `lan.` with a `2.0.192.in-addr.arpa.`
reverse zone, and `b.lan.`, whose a.b.lan differs from the one in `lan.`, so
each answer names the server it came from. The leak test puts a counting UDP
responder in the default upstream's place: it sees every name sent there.
"""

from __future__ import annotations

import socket
import threading
import urllib.request

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from heimdall.configfile import ConfigFileError, read
from heimdall_server import HeimdallProcess
from tools.nsd import LocalUpstream, free_port
from udp_responder import UdpResponder

SOA = "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"


def zone(origin: str, records: str):
    return lambda: f"$ORIGIN {origin}\n$TTL 300\n{SOA}{records}"


LAN = {"lan.": zone("lan.", "x IN A 10.0.0.1\na.b IN A 10.0.0.2\nprinter IN A 192.0.2.5\n"),
       "2.0.192.in-addr.arpa.": zone("2.0.192.in-addr.arpa.", "5 IN PTR printer.lan.\n")}
B_LAN = {"b.lan.": zone("b.lan.", "a IN A 10.0.0.3\n")}


@pytest.fixture(scope="module")
def lan_nsd():
    with LocalUpstream(zones=LAN) as up:
        yield up


@pytest.fixture(scope="module")
def b_lan_nsd():
    with LocalUpstream(zones=B_LAN) as up:
        yield up


def a_records(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


@pytest.mark.parametrize("how", ["env", "file"])
def test_each_zone_goes_to_its_own_upstream_longest_suffix_first(tmp_path, upstream, lan_nsd, b_lan_nsd, how):
    if how == "env":
        zones = f"lan={lan_nsd.addr},b.lan={b_lan_nsd.addr},2.0.192.in-addr.arpa={lan_nsd.addr}"
        srv = HeimdallProcess([upstream.addr], env={"HEIMDALL_FORWARD_ZONES": zones})
    else:  # a quoted key, a dotted key unquoted, an array
        conf = tmp_path / "h.toml"
        conf.write_text(f'[forward]\nlan = "{lan_nsd.addr}"\n"b.lan" = ["{b_lan_nsd.addr}"]\n'
                        f'2.0.192.in-addr.arpa = "{lan_nsd.addr}"\n')
        srv = HeimdallProcess([upstream.addr], args=["--config", str(conf)])
    with srv:
        assert a_records(srv.query("x.lan")) == ["10.0.0.1"]
        assert a_records(srv.query("X.LAN")) == ["10.0.0.1"]  # zones match in any case
        assert a_records(srv.query("a.b.lan")) == ["10.0.0.3"]  # b.lan is longer than lan
        assert a_records(srv.query("www.example.test")) == ["192.0.2.10"]  # the default upstream
        ptr = srv.query("5.2.0.192.in-addr.arpa", "PTR")
        assert [rd.to_text() for rrset in ptr.answer for rd in rrset] == ["printer.lan."]
        assert srv.query("nothing.lan").rcode() == dns.rcode.NXDOMAIN  # lan's own negative answer
        assert a_records(srv.query("x.lan", tcp=True)) == ["10.0.0.1"]  # cached, and over TCP too
        assert srv.stop() == 0


class CountingUpstream(UdpResponder):
    """The default upstream: remembers every name asked, answers each with one A record."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()

    def handle(self, data: bytes, src: tuple) -> None:
        q = dns.message.from_wire(data)
        with self.lock:
            self.names.append(q.question[0].name.to_text().lower())
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "198.51.100.1"))
        self.sock.sendto(r.to_wire(), src)


def test_a_zone_whose_upstream_is_down_gets_servfail_and_never_leaks(tmp_path):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    dead.bind(("127.0.0.1", 0))
    dead_addr = f"127.0.0.1:{dead.getsockname()[1]}"
    http = free_port()
    with dead, CountingUpstream() as default:
        env = {"HEIMDALL_FORWARD_ZONES": f"corp.example={dead_addr}|127.0.0.1:{free_port()}",
               "HEIMDALL_UPSTREAM_TIMEOUT": "0.5", "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{http}"}
        with HeimdallProcess([default.addr], env=env) as srv:
            for name in ("db.corp.example", "Wiki.Corp.Example", "corp.example"):
                assert srv.query(name, timeout=5).rcode() == dns.rcode.SERVFAIL
            assert a_records(srv.query("public.example.org")) == ["198.51.100.1"]
            assert srv.query("db.corp.example", timeout=5).rcode() == dns.rcode.SERVFAIL  # still, once marked down
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    with default.lock:
        seen = list(default.names)
    assert seen == ["public.example.org."], seen  # the counter works, and no corp.example name reached it
    assert f'upstream="corp.example={dead_addr}"' in metrics and f'upstream="{default.addr}"' in metrics


@pytest.mark.parametrize("text, words", [
    ('[forward]\nlan = "192.168.1.1:53"\n"corp.example" = ["10.0.0.53", "nope"]\n', ":3: [forward] zone 'corp.example'"),
    ('[forward]\nlan = 5\n', ":2: [forward] zone 'lan': want an upstream"),
    ('[forward]\n"" = "10.0.0.1"\n', ":2: [forward] zone '': the root zone"),
])
def test_forward_table_errors_name_the_line(tmp_path, text, words):
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as err:
        read(str(path))
    assert words in str(err.value), str(err.value)


def test_forward_table_and_setting_read_as_the_variable(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[forward]\nforward_zones = "home=192.168.1.1"\nlan = ["192.168.1.1", "[::1]:5353"]\n'
                    'corp.example = "10.0.0.53:5353"\n')
    assert read(str(path))["forward_zones"] == "lan=192.168.1.1:53|[::1]:5353,corp.example=10.0.0.53:5353,home=192.168.1.1"


def test_bad_forward_zones_variable_is_one_clear_line(upstream):
    srv = HeimdallProcess([upstream.addr], env={"HEIMDALL_FORWARD_ZONES": "lan=192.168.1.1,lan=10.0.0.1"})
    with pytest.raises(RuntimeError):
        srv.start()
    assert "HEIMDALL_FORWARD_ZONES: zone 'lan' is given twice" in srv.log
    srv.stop()

