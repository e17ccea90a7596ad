"""Assets: coin names to asset ids, size decimals and leverage, for every market kind.

Perps on the first dex: asset id = index in ``meta.universe``. Spot: 10000 + the pair's index,
named "PURR/USDC" or "@N"; size decimals come from the base token. Builder-deployed (HIP-3)
dexes: 100000 + dex_index x 10000 + index, named "dex:COIN". Delisted perps keep their slot (so
ids never move) and refuse new orders. A refresh only ever adds assets or changes flags.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from hlcopy.clock import SYSTEM, Clock, sleep_unless
from hlcopy.component import Component, Ready
from hlcopy.errors import ExchangeError, WireError
from hlcopy.model import Asset, Meta, PerpDex, SpotMeta

if TYPE_CHECKING:
    from hlcopy.hl.info import InfoClient

log = structlog.get_logger()

SPOT_OFFSET = 10_000
BUILDER_OFFSET = 100_000
BUILDER_DEX_STRIDE = 10_000


class Universe:
    """An immutable-by-replacement index of assets by name and by id."""

    def __init__(self, assets: Iterable[Asset] = ()) -> None:
        self._by_name: dict[str, Asset] = {}
        self._by_id: dict[int, Asset] = {}
        for a in assets:
            self._by_name[a.name] = a
            self._by_id[a.asset_id] = a

    @classmethod
    def build(
        cls, meta: Meta, spot: SpotMeta | None = None, dexes: Iterable[tuple[PerpDex, Meta]] = ()
    ) -> Universe:
        """From ``meta`` (first dex), ``spotMeta`` and each builder dex with its meta."""
        assets = [
            Asset(
                a.name,
                i,
                a.sz_decimals,
                a.max_leverage,
                delisted=a.delisted,
                only_isolated=a.only_isolated or a.margin_mode in ("strictIsolated", "noCross"),
            )
            for i, a in enumerate(meta.universe)
        ]
        if spot is not None:
            tokens = {t.index: t for t in spot.tokens}
            for pair in spot.universe:
                base = tokens.get(pair.base)
                if base is None:
                    raise WireError(f"spot pair {pair.name} names unknown token {pair.base}")
                assets.append(
                    Asset(pair.name, SPOT_OFFSET + pair.index, base.sz_decimals, 1, is_spot=True)
                )
        for dex, dex_meta in dexes:
            offset = BUILDER_OFFSET + dex.index * BUILDER_DEX_STRIDE
            for i, a in enumerate(dex_meta.universe):
                name = a.name if ":" in a.name else f"{dex.name}:{a.name}"
                assets.append(
                    Asset(
                        name,
                        offset + i,
                        a.sz_decimals,
                        a.max_leverage,
                        dex=dex.name,
                        delisted=a.delisted,
                        only_isolated=True,
                    )
                )
        return cls(assets)

    def merge(self, newer: Universe) -> Universe:
        """``newer``'s view, refusing any change of an existing asset's id."""
        for name, asset in newer._by_name.items():
            old = self._by_name.get(name)
            if old is not None and old.asset_id != asset.asset_id:
                raise WireError(f"asset {name} moved from id {old.asset_id} to {asset.asset_id}")
        # Assets that vanished from the newer listing keep their slot, marked delisted.
        kept = [
            a
            if a.delisted
            else Asset(
                a.name,
                a.asset_id,
                a.sz_decimals,
                a.max_leverage,
                a.is_spot,
                a.dex,
                True,
                a.only_isolated,
            )
            for n, a in self._by_name.items()
            if n not in newer._by_name
        ]
        return Universe([*newer._by_name.values(), *kept])

    def __iter__(self) -> Iterator[Asset]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Asset | None:
        return self._by_name.get(name)

    def by_name(self, name: str) -> Asset:
        """The asset called ``name``; WireError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise WireError(f"unknown coin {name!r}") from None

    def by_id(self, asset_id: int) -> Asset:
        try:
            return self._by_id[asset_id]
        except KeyError:
            raise WireError(f"unknown asset id {asset_id}") from None

    def tradable(self, name: str) -> Asset:
        """The asset, if new orders may be placed on it."""
        asset = self.by_name(name)
        if asset.delisted:
            raise WireError(f"{name} is delisted: no new orders")
        return asset

    def perps(self, dex: str = "") -> list[Asset]:
        """Perps of one dex (the first by default), listed ones only, in id order."""
        return sorted(
            (
                a
                for a in self._by_name.values()
                if not a.is_spot and a.dex == dex and not a.delisted
            ),
            key=lambda a: a.asset_id,
        )


async def load_universe(
    info: InfoClient, *, spot: bool = True, builder_dexes: bool = False
) -> Universe:
    """Fetch everything the universe is built from."""
    meta = await info.meta()
    spot_meta = await info.spot_meta() if spot else None
    dexes: list[tuple[PerpDex, Meta]] = []
    if builder_dexes:
        for dex in await info.perp_dexs():
            dexes.append((dex, await info.meta(dex=dex.name)))
    return Universe.build(meta, spot_meta, dexes)


class UniverseService(Component):
    """Loads the universe at start (ready once it has) and refreshes it periodically."""

    name = "universe"

    def __init__(
        self,
        info: InfoClient,
        *,
        refresh_s: float = 600.0,
        spot: bool = True,
        builder_dexes: bool = False,
        clock: Clock = SYSTEM,
    ) -> None:
        self._info = info
        self._clock = clock
        self._refresh_s = refresh_s
        self._spot = spot
        self._builder_dexes = builder_dexes
        self._draining = asyncio.Event()
        self.universe = Universe()
        self.refreshes = 0
        self.refresh_failures = 0

    async def refresh(self) -> None:
        newer = await load_universe(self._info, spot=self._spot, builder_dexes=self._builder_dexes)
        self.universe = self.universe.merge(newer) if len(self.universe) else newer
        self.refreshes += 1

    async def run(self, ready: Ready) -> None:
        if not len(self.universe):
            await self.refresh()  # a failure here is transient: the supervisor retries
        log.info("universe loaded", assets=len(self.universe))
        ready.set()
        while not self._draining.is_set():
            if await sleep_unless(self._clock, self._draining, self._refresh_s):
                return
            try:
                await self.refresh()
            except (ExchangeError, WireError) as exc:
                # A stale universe is still correct for every listed asset: keep it.
                self.refresh_failures += 1
                log.warning("universe refresh failed", error=str(exc))

    async def drain(self) -> None:
        self._draining.set()

    def stats(self) -> dict[str, Any]:
        return {
            "assets": len(self.universe),
            "refreshes": self.refreshes,
            "refresh_failures": self.refresh_failures,
        }
