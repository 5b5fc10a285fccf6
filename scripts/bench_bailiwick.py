"""Micro-benchmark: the bailiwick check against scan_response on typical replies (docs/reliability-security.md)."""
import timeit, dns.message, dns.rrset
from heimdall import wire, bailiwick
q = dns.message.make_query("www.example.test", "A")
def t(label, r):
    w = r.to_wire(); s = wire.scan_response(w, full=False)
    n=20000
    print("%-12s clean %.2f us  scan %.2f us  -> %s" % (label, timeit.timeit(lambda: bailiwick.clean(w, s), number=n)/n*1e6,
          timeit.timeit(lambda: wire.scan_response(w, full=False), number=n)/n*1e6, bailiwick.clean(w, s)))
r = dns.message.make_response(q); r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
t("plain", r)
r = dns.message.make_response(q); r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "CNAME", "cdn.example.net."))
r.answer.append(dns.rrset.from_text("cdn.example.net.", 300, "IN", "CNAME", "edge.cdn.example.net."))
r.answer.append(dns.rrset.from_text("edge.cdn.example.net.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
t("cname", r)
r = dns.message.make_response(q); r.set_rcode(3); r.authority.append(dns.rrset.from_text("example.test.", 300, "IN", "SOA", "ns. h. 1 2 3 4 5"))
t("nxdomain", r)
r = dns.message.make_response(q); r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.1"))
r.answer.append(dns.rrset.from_text("www.victim.test.", 300, "IN", "A", "6.6.6.6"))
w = r.to_wire(); s = wire.scan_response(w, full=False)
print("strip: %.1f us" % (timeit.timeit(lambda: bailiwick.strip(w, s), number=2000)/2000*1e6))
