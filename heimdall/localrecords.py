"""Stage 3 (policy), first: local records answered authoritatively, before blocking and the cache.

The records (heimdall/localdata.py) are turned into reply templates
(heimdall/localanswers.py) when they load; `check` is a dict lookup on the
lower-cased name, then, for a name that is not local, one lookup per label
in the local zones (NXDOMAIN under a zone). Answers carry the local TTL and
the pipeline caches them under the UDP key like blocked answers, so repeated
local queries are served by the hot path at cache-hit cost.

A reload (SIGHUP; with a config file, its [local] settings too) reads the
files in a thread, swaps the templates on the loop (no query sees half of
it), then drops every cached answer for a name that was or is local, or in
a local zone, so no cached answer outlives the change. A reload that fails
keeps the records in use and logs why.
"""

from __future__ import annotations

import asyncio
import logging
import time

from heimdall import cachekey, wire
from heimdall.cache import Cache
from heimdall.config import Config
from heimdall.localanswers import Builder, Template, render
from heimdall.localdata import LocalData, LocalDataError, load
from heimdall.outcome import Answer, How
from heimdall.wire import Query

log = logging.getLogger("heimdall.localrecords")

IN = 1


def load_config(config: Config) -> LocalData:
    """The records the configuration names; LocalDataError naming the file, line or entry."""
    return load(config.local_records, config.local_entries, config.local_zones, config.local_ttl)


Built = tuple[dict[bytes, dict[int, Template]], dict[bytes, Template]]


def load_built(config: Config) -> tuple[LocalData, Built]:
    """The records and their templates (a reload's work, done in a thread)."""
    data = load_config(config)
    return data, Builder(data).build()


class LocalRecords:
    def __init__(self, data: LocalData, cache: Cache, built: "Built | None" = None):
        self.cache = cache
        self.answered = 0  # by this stage (hits on cached local answers are counted as cache hits)
        self.reloads = 0
        self.data = LocalData()
        self.names: dict[bytes, dict[int, Template]] = {}
        self.zones: dict[bytes, Template] = {}
        self.ttl = 0
        self.use(data, built)
        self._reloading: asyncio.Task | None = None

    def check(self, data: bytes, q: Query) -> Answer | None:
        """The authoritative answer for a local name or a name in a local zone, else None."""
        if q.qclass != IN:
            return None
        name = data[12:q.qend - 4].lower()
        by_type = self.names.get(name)
        t: Template | None
        if by_type is not None:
            t = by_type.get(q.qtype) or by_type[0]
        elif self.zones:
            t = self.in_zone(name)
            if t is None:
                return None
        else:
            return None
        self.answered += 1
        return Answer(render(data, q.qend, t), How.LOCAL, self.ttl)

    def in_zone(self, name: bytes) -> Template | None:
        """The NXDOMAIN of the longest local zone `name` is under, else None."""
        return wire.longest_suffix(self.zones, name)

    def use(self, data: LocalData, built: Built | None = None) -> int:
        """Answer from `data` (its templates: `built`) from now on; how many cached answers were dropped."""
        names, zones = built or Builder(data).build()
        old_names, old_zones = self.names, self.zones
        self.data, self.names, self.zones, self.ttl = data, names, zones, data.ttl
        return self.purge_cache(old_names.keys() | names.keys(), old_zones.keys() | zones.keys())

    def purge_cache(self, names: set[bytes], zones: set[bytes]) -> int:
        """Drop cached entries for these names and for every name under these zones."""
        if not names and not zones:
            return 0
        m = self.cache.map
        dropped = 0
        zone_table = dict.fromkeys(zones, True)
        for key in list(m):
            name = cachekey.qname(key)
            if name and (name in names or (zone_table and wire.longest_suffix(zone_table, name))):
                del m[key]
                dropped += 1
        return dropped

    def request_reload(self, config: Config) -> None:
        """Reload in the background; a reload asked for while one runs follows it."""
        previous = self._reloading

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await self.reload(config)

        self._reloading = asyncio.get_running_loop().create_task(run())

    async def reload(self, config: Config) -> None:
        """Read in a thread (the loop keeps answering), then swap and purge on the loop."""
        started = time.monotonic()
        try:
            data, built = await asyncio.get_running_loop().run_in_executor(None, load_built, config)
        except LocalDataError as exc:
            log.error(f"local records not reloaded, the ones in use stay: {exc}")
            return
        if data == self.data:
            return
        dropped = self.use(data, built)
        self.reloads += 1
        log.info("local records reloaded in %.2fs: %d names, %d zones; %d cached answers dropped",
                 time.monotonic() - started, len(data.records), len(data.zones), dropped)
