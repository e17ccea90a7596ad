"""The signed ``/exchange`` client. It never retries an action.

Every outcome is one of three kinds:

* definite — the exchange answered: per-order statuses come back (each order resting, filled or
  refused), or the whole action was refused (``Rejected``, ``BadRequest``);
* transient — it certainly did not reach the exchange: the connection was refused before any byte
  was sent, or HTTP 429 (the gateway's rate limiter answers before the action is processed);
* ambiguous — it may have been executed: a timeout or disconnect after sending, an unreadable
  reply, or a 5xx (a gateway error can arrive after the node already took the action).
  ``AmbiguousOutcome`` is settled by the executor with ``orderStatus(cloid)`` once
  ``expiresAfter`` has passed, never by sending again.

Weight: ``1 + floor(n / 40)`` in the order lane for a batch of n.

Actions go over a WebSocket ``post`` when a stream connection is up (``poster``), REST
otherwise; the reply is read the same way either way. A socket that closes after sending, or a
reply that does not come in time, is ambiguous like its REST counterpart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from hlcopy.budget import Lane, WeightBudget
from hlcopy.errors import (
    AmbiguousOutcome,
    BadRequest,
    RateLimited,
    Rejected,
    StreamError,
    Unavailable,
    WireError,
)
from hlcopy.hl import parse, wire
from hlcopy.hl.info import HEADERS
from hlcopy.hl.signing import NonceSource, Signer
from hlcopy.hl.wire import Rounding
from hlcopy.model import Asset, CancelStatus, OrderSpec, OrderStatus
from hlcopy.record import record

T = TypeVar("T")


class ActionPoster(Protocol):
    """Who can post a signed action over a WebSocket (the stream pool)."""

    @property
    def post_ready(self) -> bool: ...

    async def post_action(self, body: bytes) -> object: ...


def _data(response: Any) -> Any:
    if not isinstance(response, dict) or "data" not in response:
        raise WireError(f"a reply without statuses: {response!r}")
    return response["data"]


def action_weight(n_items: int) -> int:
    """IP weight of an action carrying ``n_items`` orders or cancels."""
    return 1 + n_items // 40


def _order_wire(spec: OrderSpec) -> dict[str, Any]:
    """One order on the wire: the price rounded in the safe direction (a buy never pays more,
    a sell never takes less than asked), the size rounded down to the lot."""
    asset = spec.asset
    if asset.delisted:
        raise WireError(f"{asset.name} is delisted")
    rounding = Rounding.DOWN if spec.is_buy else Rounding.UP
    px = wire.round_price(spec.px, asset.sz_decimals, asset.is_spot, rounding)
    sz = wire.round_size(spec.sz, asset.sz_decimals)
    if sz <= 0:
        raise WireError(f"size {spec.sz} is less than one lot of {asset.name}")
    trigger = None
    if spec.trigger_px is not None:
        if spec.tpsl is None:
            raise WireError("a trigger order needs tpsl ('tp' or 'sl')")
        trigger = {
            "isMarket": spec.trigger_is_market,
            "triggerPx": wire.round_price(
                spec.trigger_px, asset.sz_decimals, asset.is_spot, Rounding.NEAREST
            ),
            "tpsl": spec.tpsl,
        }
    tif = None if trigger is not None else spec.tif
    return wire.order_wire(
        asset.asset_id, spec.is_buy, px, sz, spec.reduce_only, tif, spec.cloid, trigger
    )


@record
class PreparedAction:
    """A signed action ready to go: built first, sent later.

    The executor prepares (nonce, expiresAfter, signature), commits its intent row, and only then
    sends: nothing unrecorded can reach the exchange.
    """

    body: bytes
    kind: str
    nonce: int
    n_items: int
    expires_after: int | None


class ActionSigner:
    """Builds and signs actions for one signer and account: pure work, no I/O.

    Rounding and the wire dicts happen here, inside ``hl/``; what comes out is a
    ``PreparedAction`` (request bytes) that the exchange client sends.
    """

    def __init__(
        self,
        signer: Signer,
        *,
        is_mainnet: bool,
        vault_address: str | None = None,
        nonces: NonceSource | None = None,
    ) -> None:
        self.signer = signer
        self.is_mainnet = is_mainnet
        self.vault_address = None if vault_address is None else wire.check_address(vault_address)
        self.nonces = nonces or NonceSource()

    def orders(
        self,
        specs: Sequence[OrderSpec],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> PreparedAction:
        """One order action (at most 200 orders)."""
        action = wire.order_action([_order_wire(o) for o in specs])
        return self._prepare(action, len(specs), nonce, expires_after)

    def cancels(
        self,
        cancels: Sequence[tuple[Asset, int]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> PreparedAction:
        """Cancel by ``(asset, exchange order id)``."""
        action = wire.cancel_action((a.asset_id, oid) for a, oid in cancels)
        return self._prepare(action, len(action["cancels"]), nonce, expires_after)

    def cancels_by_cloid(
        self,
        cancels: Sequence[tuple[Asset, str]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> PreparedAction:
        """Cancel by ``(asset, client order id)``."""
        action = wire.cancel_by_cloid_action((a.asset_id, cloid) for a, cloid in cancels)
        return self._prepare(action, len(action["cancels"]), nonce, expires_after)

    def modify(
        self,
        modifies: Sequence[tuple[int | str, OrderSpec]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> PreparedAction:
        """Replace resting orders (by oid or cloid) with new ones."""
        action = wire.batch_modify_action((ref, _order_wire(spec)) for ref, spec in modifies)
        return self._prepare(action, len(action["modifies"]), nonce, expires_after)

    def update_leverage(
        self, asset: Asset, leverage: int, *, is_cross: bool, nonce: int | None = None
    ) -> PreparedAction:
        if not 1 <= leverage <= asset.max_leverage:
            raise WireError(f"leverage for {asset.name} must be 1..{asset.max_leverage}")
        action = wire.update_leverage_action(asset.asset_id, is_cross, leverage)
        return self._prepare(action, 1, nonce, None)

    def schedule_cancel(self, time_ms: int | None, *, nonce: int | None = None) -> PreparedAction:
        return self._prepare(wire.schedule_cancel_action(time_ms), 1, nonce, None)

    def noop(self, *, nonce: int | None = None) -> PreparedAction:
        return self._prepare(wire.noop_action(), 1, nonce, None)

    def approve_agent(
        self,
        master: Signer,
        agent_address: str,
        agent_name: str | None = None,
        *,
        nonce: int | None = None,
    ) -> PreparedAction:
        """An approveAgent signed by ``master`` (a user-signed action, not an L1 one)."""
        nonce = self.nonces.next() if nonce is None else nonce
        action = wire.approve_agent_action(agent_address, agent_name, nonce, self.is_mainnet)
        signature = master._sign_user_action(
            action, wire.APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent"
        )
        if not agent_name:
            # An unnamed agent is signed with agentName "" and sent without the field.
            action = {k: v for k, v in action.items() if k != "agentName"}
        body = orjson.dumps({"action": action, "nonce": nonce, "signature": signature})
        return PreparedAction(body, "approveAgent", nonce, 1, None)

    def _signed_body(
        self, action: Mapping[str, Any], nonce: int, expires_after: int | None = None
    ) -> dict[str, Any]:
        """The request body for an L1 action."""
        signature = self.signer._sign_l1_action(
            action, self.vault_address, nonce, expires_after, self.is_mainnet
        )
        return {
            "action": action,
            "nonce": nonce,
            "signature": signature,
            "vaultAddress": self.vault_address,
            "expiresAfter": expires_after,
        }

    def _prepare(
        self,
        action: Mapping[str, Any],
        n_items: int,
        nonce: int | None,
        expires_after: int | None,
    ) -> PreparedAction:
        nonce = self.nonces.next() if nonce is None else nonce
        body = orjson.dumps(self._signed_body(action, nonce, expires_after))
        return PreparedAction(body, str(action["type"]), nonce, n_items, expires_after)


class ExchangeClient:
    """Sends actions for one signer (an API wallet, usually) and one account.

    Building and signing is the ``ActionSigner``'s (``self.actions``); this class only posts,
    within the order lane of the weight budget, and classifies what came back.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        signer: Signer,
        budget: WeightBudget,
        *,
        is_mainnet: bool,
        vault_address: str | None = None,
        nonces: NonceSource | None = None,
        poster: ActionPoster | None = None,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/exchange"
        self._budget = budget
        self._poster = poster
        self.actions = ActionSigner(
            signer, is_mainnet=is_mainnet, vault_address=vault_address, nonces=nonces
        )
        self.sent = 0
        self.sent_ws = 0
        self.outcomes = {"ok": 0, "rejected": 0, "transient": 0, "ambiguous": 0}

    @property
    def nonces(self) -> NonceSource:
        return self.actions.nonces

    # -- actions --------------------------------------------------------------------------

    async def admit(self, n_items: int) -> None:
        """Wait for an action of ``n_items`` to fit in the weight budget's order lane, and spend
        its weight. Called before the action is stamped and signed (then sent with
        ``admitted=True``): a wait for weight (a burst beyond the room the reads leave for
        orders) must not leave it expired on arrival, as it did when signed first."""
        await self._budget.acquire(action_weight(n_items), Lane.ORDER, action=True)

    async def send_orders(
        self, prepared: PreparedAction, *, admitted: bool = False
    ) -> list[OrderStatus]:
        """Send a prepared order action; one status per order, in order. ``admitted``: its
        weight was spent already (``admit``)."""
        n = prepared.n_items
        statuses: list[OrderStatus] = await self._send(
            prepared, lambda r: parse.parse_order_statuses(_data(r), n), admitted=admitted
        )
        return statuses

    async def place(
        self,
        orders: Sequence[OrderSpec],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[OrderStatus]:
        """Prepare and send at once (when nothing needs recording in between)."""
        return await self.send_orders(
            self.actions.orders(orders, nonce=nonce, expires_after=expires_after)
        )

    async def cancel(
        self,
        cancels: Sequence[tuple[Asset, int]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[CancelStatus]:
        """Cancel by ``(asset, exchange order id)``."""
        return await self._cancels(
            self.actions.cancels(cancels, nonce=nonce, expires_after=expires_after)
        )

    async def cancel_by_cloid(
        self,
        cancels: Sequence[tuple[Asset, str]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[CancelStatus]:
        """Cancel by ``(asset, client order id)``."""
        return await self._cancels(
            self.actions.cancels_by_cloid(cancels, nonce=nonce, expires_after=expires_after)
        )

    async def modify(
        self,
        modifies: Sequence[tuple[int | str, OrderSpec]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[OrderStatus]:
        """Replace resting orders (by oid or cloid) with new ones."""
        return await self.send_orders(
            self.actions.modify(modifies, nonce=nonce, expires_after=expires_after)
        )

    async def update_leverage(
        self, asset: Asset, leverage: int, *, is_cross: bool, nonce: int | None = None
    ) -> None:
        """Set an asset's leverage and margin mode (the exchange refuses a mode switch while a
        position is open, and a lower leverage the margin cannot carry)."""
        await self._send(
            self.actions.update_leverage(asset, leverage, is_cross=is_cross, nonce=nonce)
        )

    async def schedule_cancel(self, time_ms: int | None, *, nonce: int | None = None) -> None:
        """Arm (or, with None, clear) the dead man's switch."""
        await self._send(self.actions.schedule_cancel(time_ms, nonce=nonce))

    async def noop(self, *, nonce: int | None = None) -> None:
        """Use up a nonce; with an in-flight order's nonce it guarantees that order never lands."""
        await self._send(self.actions.noop(nonce=nonce))

    async def approve_agent(
        self,
        master: Signer,
        agent_address: str,
        agent_name: str | None = None,
        *,
        nonce: int | None = None,
    ) -> None:
        """Approve ``agent_address`` to trade for ``master``'s account (signed by the master)."""
        await self._send(self.actions.approve_agent(master, agent_address, agent_name, nonce=nonce))

    # -- the wire -------------------------------------------------------------------------

    async def _cancels(self, prepared: PreparedAction) -> list[CancelStatus]:
        n = prepared.n_items
        statuses: list[CancelStatus] = await self._send(
            prepared, lambda r: parse.parse_cancel_statuses(_data(r), n)
        )
        return statuses

    async def _send(
        self,
        prepared: PreparedAction,
        read: Callable[[Any], T] | None = None,
        *,
        admitted: bool = False,
    ) -> Any:
        """Post a prepared action, charged to the order lane (unless ``admitted``). Returns the
        ``response`` of a ``status: ok`` reply, or what ``read`` makes of it (a reply ``read``
        cannot make sense of is ambiguous)."""
        if not admitted:
            await self.admit(prepared.n_items)
        poster = self._poster
        if poster is not None and poster.post_ready:
            try:
                return await self._post_ws(poster, prepared, read)
            except (StreamError, Unavailable, TimeoutError):
                pass  # no socket took it (nothing was sent): REST it is
        return await self._post(prepared.body, prepared.kind, prepared.nonce, read)

    async def _post_ws(
        self, poster: ActionPoster, prepared: PreparedAction, read: Callable[[Any], T] | None
    ) -> Any:
        what, nonce = prepared.kind, prepared.nonce
        try:
            reply = await poster.post_action(prepared.body)
        except AmbiguousOutcome as exc:
            self.sent += 1
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(f"{what}: {exc}", action=what, nonce=nonce) from exc
        self.sent += 1
        self.sent_ws += 1
        return self._read_reply(reply, what, nonce, read, None)

    async def _post(
        self, payload: bytes, what: str, nonce: int, read: Callable[[Any], T] | None = None
    ) -> Any:
        self.sent += 1
        try:
            async with self._session.post(self._url, data=payload, headers=HEADERS) as r:
                status = r.status
                raw = await r.read()
        except aiohttp.ClientConnectorError as exc:
            # Refused or unresolvable before a byte was sent: it cannot have landed.
            self.outcomes["transient"] += 1
            raise Unavailable(f"{what}: cannot connect: {exc}", action=what, nonce=nonce) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: no reply ({type(exc).__name__}); it may have landed",
                action=what,
                nonce=nonce,
            ) from exc
        if status == 429:
            self.outcomes["transient"] += 1
            self._budget.rate_limited()
            raise RateLimited(f"{what}: HTTP 429", status=429, action=what, nonce=nonce)
        if status >= 500:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: HTTP {status}; it may have landed",
                status=status,
                action=what,
                nonce=nonce,
            )
        if status >= 400:
            self.outcomes["rejected"] += 1
            raise BadRequest(
                f"{what}: HTTP {status}: {raw[:200].decode(errors='replace')}",
                status=status,
                action=what,
                nonce=nonce,
            )
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: unreadable reply {raw[:200]!r}", status=status, action=what, nonce=nonce
            ) from exc
        return self._read_reply(reply, what, nonce, read, status)

    def _read_reply(
        self,
        reply: Any,
        what: str,
        nonce: int,
        read: Callable[[Any], T] | None,
        status: int | None,
    ) -> Any:
        """The exchange's ``{"status", "response"}`` reply, over REST or the socket."""
        try:
            outcome = reply["status"]
        except (KeyError, TypeError) as exc:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: unreadable reply {str(reply)[:200]!r}",
                status=status,
                action=what,
                nonce=nonce,
            ) from exc
        if outcome == "err":
            self.outcomes["rejected"] += 1
            raise Rejected(str(reply.get("response")), status=status, action=what, nonce=nonce)
        try:
            if outcome != "ok":
                raise WireError(f"unexpected status {outcome!r}")
            result = reply.get("response") if read is None else read(reply.get("response"))
        except WireError as exc:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: unreadable reply: {exc}", action=what, nonce=nonce
            ) from exc
        self.outcomes["ok"] += 1
        return result

    def stats(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "sent_ws": self.sent_ws,
            **self.outcomes,
            "last_nonce": self.actions.nonces.last,
        }
