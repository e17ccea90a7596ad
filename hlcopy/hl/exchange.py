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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson

from hlcopy.budget import Lane, WeightBudget
from hlcopy.errors import (
    AmbiguousOutcome,
    BadRequest,
    RateLimited,
    Rejected,
    Unavailable,
    WireError,
)
from hlcopy.hl import parse, wire
from hlcopy.hl.info import HEADERS
from hlcopy.hl.signing import NonceSource, Signer
from hlcopy.model import CancelStatus, OrderStatus

T = TypeVar("T")


def _data(response: Any) -> Any:
    if not isinstance(response, dict) or "data" not in response:
        raise WireError(f"a reply without statuses: {response!r}")
    return response["data"]


def action_weight(n_items: int) -> int:
    """IP weight of an action carrying ``n_items`` orders or cancels."""
    return 1 + n_items // 40


class ExchangeClient:
    """Signs and posts actions for one signer (an API wallet, usually) and one account."""

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
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/exchange"
        self.signer = signer
        self._budget = budget
        self.is_mainnet = is_mainnet
        self.vault_address = None if vault_address is None else wire.check_address(vault_address)
        self.nonces = nonces or NonceSource()
        self.sent = 0
        self.outcomes = {"ok": 0, "rejected": 0, "transient": 0, "ambiguous": 0}

    def signed_body(
        self, action: Mapping[str, Any], nonce: int, expires_after: int | None = None
    ) -> dict[str, Any]:
        """The request body for an L1 action."""
        signature = self.signer.sign_l1_action(
            action, self.vault_address, nonce, expires_after, self.is_mainnet
        )
        return {
            "action": action,
            "nonce": nonce,
            "signature": signature,
            "vaultAddress": self.vault_address,
            "expiresAfter": expires_after,
        }

    async def post_action(
        self,
        action: Mapping[str, Any],
        *,
        n_items: int = 1,
        nonce: int | None = None,
        expires_after: int | None = None,
        read: Callable[[Any], T] | None = None,
    ) -> Any:
        """Sign and send an L1 action. Returns the ``response`` of a ``status: ok`` reply, or
        what ``read`` makes of it (a reply ``read`` cannot make sense of is ambiguous)."""
        await self._budget.acquire(action_weight(n_items), Lane.ORDER)
        nonce = self.nonces.next() if nonce is None else nonce
        body = self.signed_body(action, nonce, expires_after)
        return await self._post(body, str(action["type"]), nonce, read)

    async def _post(
        self, body: Mapping[str, Any], what: str, nonce: int, read: Callable[[Any], T] | None = None
    ) -> Any:
        self.sent += 1
        payload = orjson.dumps(body)
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
            outcome = reply["status"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.outcomes["ambiguous"] += 1
            raise AmbiguousOutcome(
                f"{what}: unreadable reply {raw[:200]!r}", status=status, action=what, nonce=nonce
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

    # -- actions --------------------------------------------------------------------------

    async def order(
        self,
        wires: Sequence[dict[str, Any]],
        grouping: wire.Grouping = "na",
        builder: Mapping[str, Any] | None = None,
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[OrderStatus]:
        """Place one or more orders (at most 200); one status per order, in order."""
        action = wire.order_action(wires, grouping, builder)
        return await self._statuses(
            action, len(wires), parse.parse_order_statuses, nonce, expires_after
        )

    async def cancel(
        self,
        cancels: Iterable[tuple[int, int]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[CancelStatus]:
        """Cancel by ``(asset, oid)``."""
        action = wire.cancel_action(cancels)
        return await self._statuses(
            action, len(action["cancels"]), parse.parse_cancel_statuses, nonce, expires_after
        )

    async def cancel_by_cloid(
        self,
        cancels: Iterable[tuple[int, str]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[CancelStatus]:
        """Cancel by ``(asset, cloid)``."""
        action = wire.cancel_by_cloid_action(cancels)
        return await self._statuses(
            action, len(action["cancels"]), parse.parse_cancel_statuses, nonce, expires_after
        )

    async def batch_modify(
        self,
        modifies: Iterable[tuple[int | str, dict[str, Any]]],
        *,
        nonce: int | None = None,
        expires_after: int | None = None,
    ) -> list[OrderStatus]:
        """Replace resting orders (by oid or cloid)."""
        action = wire.batch_modify_action(modifies)
        return await self._statuses(
            action, len(action["modifies"]), parse.parse_order_statuses, nonce, expires_after
        )

    async def _statuses(
        self,
        action: dict[str, Any],
        n: int,
        parser: Callable[[Any, int], list[T]],
        nonce: int | None,
        expires_after: int | None,
    ) -> list[T]:
        """Post an action of ``n`` items and read one status per item."""
        statuses: list[T] = await self.post_action(
            action,
            n_items=n,
            nonce=nonce,
            expires_after=expires_after,
            read=lambda r: parser(_data(r), n),
        )
        return statuses

    async def schedule_cancel(self, time_ms: int | None, *, nonce: int | None = None) -> None:
        """Arm (or, with None, clear) the dead man's switch."""
        await self.post_action(wire.schedule_cancel_action(time_ms), nonce=nonce)

    async def update_leverage(
        self, asset: int, is_cross: bool, leverage: int, *, nonce: int | None = None
    ) -> None:
        await self.post_action(wire.update_leverage_action(asset, is_cross, leverage), nonce=nonce)

    async def noop(self, *, nonce: int | None = None) -> None:
        """Use up a nonce; with an in-flight order's nonce it guarantees that order never lands."""
        await self.post_action(wire.noop_action(), nonce=nonce)

    async def approve_agent(
        self,
        master: Signer,
        agent_address: str,
        agent_name: str | None = None,
        *,
        nonce: int | None = None,
    ) -> None:
        """Approve ``agent_address`` to trade for ``master``'s account (signed by the master)."""
        await self._budget.acquire(1, Lane.ORDER)
        nonce = self.nonces.next() if nonce is None else nonce
        action = wire.approve_agent_action(agent_address, agent_name, nonce, self.is_mainnet)
        signature = master.sign_user_action(
            action, wire.APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent"
        )
        if not agent_name:
            # An unnamed agent is signed with agentName "" and sent without the field.
            action = {k: v for k, v in action.items() if k != "agentName"}
        body = {"action": action, "nonce": nonce, "signature": signature}
        await self._post(body, "approveAgent", nonce)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, **self.outcomes, "last_nonce": self.nonces.last}
