"""``/exchange`` for the simulator: parse, authenticate, check nonces, execute. Synchronous.

The action is parsed into types and re-serialised in the exchange's own key order and number
format before its hash is taken, as the exchange does: a client that signed trailing zeros, an
uppercase address or keys in another order recovers to a different address and is refused as
an unknown user. Nothing a client sends is trusted: every field is checked for its type and
bounds before any arithmetic (numbers are plain decimal strings of bounded length, integers fit
the exchange's 64 bits), and anything else does not deserialise (HTTP 422).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hlcopy.errors import WireError
from hlcopy.hl.wire import to_wire
from hlcopy.sim.auth import USER_SIGNED, NonceBook, recover_l1, recover_user_signed
from hlcopy.sim.engine import Engine, OrderRequest
from hlcopy.sim.fmt import plain

_CLOID = re.compile(r"0x[0-9a-fA-F]{32}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,64}")
MAX_ITEMS = 200
MAX_DESERIALISED = 10_000  # items in one body: past this it is not even read
CANCEL_EXTRA = 100_000  # cancels get min(limit + 100000, 2 * limit)
U64 = 2**64


class BadAction(Exception):
    """The body does not deserialise into an action (the exchange answers HTTP 422)."""


def _err(message: str) -> dict[str, Any]:
    return {"status": "err", "response": message}


def _ok(kind: str, statuses: list[Any] | None = None) -> dict[str, Any]:
    if statuses is None:
        return {"status": "ok", "response": {"type": "default"}}
    return {"status": "ok", "response": {"type": kind, "data": {"statuses": statuses}}}


def _num(value: Any) -> Decimal:
    """A wire number: a plain decimal string of bounded length that the exchange can hash
    (at most 8 decimals once trailing zeros go)."""
    out = plain(value)
    if out is None:
        raise BadAction(f"not a number: {str(value)[:40]!r}")
    try:
        to_wire(out)
    except WireError as exc:
        raise BadAction(f"too many decimals: {value!r}") from exc
    return out


def _int(value: Any, hi: int = U64) -> int:
    """An unsigned integer below ``hi`` (the exchange's fields are u64 or narrower)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < hi:
        raise BadAction(f"expected an unsigned integer, got {str(value)[:40]!r}")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadAction(f"{what} is an object")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadAction(f"expected a boolean, got {value!r}")
    return value


def _cloid(value: Any) -> str:
    if not isinstance(value, str) or not _CLOID.fullmatch(value):
        raise BadAction(f"bad cloid {value!r}")
    return value.lower()


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise BadAction(f"bad address {value!r}")
    return value.lower()


def parse_order(w: Any) -> tuple[OrderRequest, dict[str, Any]]:
    """One order wire: the request and its canonical form (what the exchange hashes)."""
    w = _obj(w, "an order")
    try:
        asset, is_buy, px, sz = _int(w["a"], 2**32), _bool(w["b"]), _num(w["p"]), _num(w["s"])
        reduce_only, kind = _bool(w["r"]), w["t"]
    except KeyError as exc:
        raise BadAction(f"order field {exc} missing") from exc
    trigger: dict[str, Any] | None = None
    if isinstance(kind, dict) and isinstance(kind.get("limit"), dict):
        tif = kind["limit"].get("tif")
        if tif not in ("Gtc", "Ioc", "Alo", "FrontendMarket"):
            raise BadAction(f"bad tif {tif!r}")
        canonical_t: dict[str, Any] = {"limit": {"tif": tif}}
        tif = "Ioc" if tif == "FrontendMarket" else tif
    elif isinstance(kind, dict) and isinstance(kind.get("trigger"), dict):
        t = kind["trigger"]
        if t.get("tpsl") not in ("tp", "sl"):  # (a dict: checked above)
            raise BadAction("bad tpsl")
        trigger = {
            "isMarket": _bool(t.get("isMarket")),
            "triggerPx": _num(t.get("triggerPx")),
            "tpsl": t["tpsl"],
        }
        canonical_t = {
            "trigger": {
                "isMarket": trigger["isMarket"],
                "triggerPx": to_wire(trigger["triggerPx"]),
                "tpsl": trigger["tpsl"],
            }
        }
        tif = None
    else:
        raise BadAction("order type must be limit or trigger")
    cloid = _cloid(w["c"]) if w.get("c") is not None else None
    canonical: dict[str, Any] = {
        "a": asset,
        "b": is_buy,
        "p": to_wire(px),
        "s": to_wire(sz),
        "r": reduce_only,
        "t": canonical_t,
    }
    if cloid is not None:
        canonical["c"] = w["c"]
    return OrderRequest(asset, is_buy, px, sz, reduce_only, tif, cloid, trigger), canonical


def _items(action: dict[str, Any], key: str) -> list[Any]:
    items = action.get(key)
    if not isinstance(items, list) or not items or len(items) > MAX_DESERIALISED:
        raise BadAction(f"{key} must be a non-empty list")
    return items


def canonical(action: Any) -> tuple[dict[str, Any], list[OrderRequest]]:
    """The action as the exchange re-serialises it, and its orders (for order-like actions)."""
    if not isinstance(action, dict) or not isinstance(action.get("type"), str):
        raise BadAction("an action is an object with a type")
    kind = action["type"]
    if kind == "order":
        parsed = [parse_order(w) for w in _items(action, "orders")]
        grouping = action.get("grouping", "na")
        if not (grouping in ("na", "normalTpsl", "positionTpsl") or isinstance(grouping, dict)):
            raise BadAction(f"bad grouping {grouping!r}")
        out: dict[str, Any] = {
            "type": "order",
            "orders": [c for _, c in parsed],
            "grouping": grouping,
        }
        if action.get("builder") is not None:
            b = _obj(action["builder"], "builder")
            out["builder"] = {"b": _address(b.get("b")), "f": _int(b.get("f"), 1001)}
        return out, [o for o, _ in parsed]
    if kind == "cancel":
        cancels = [
            {"a": _int(c.get("a"), 2**32), "o": _int(c.get("o"))}
            for c in (_obj(c, "a cancel") for c in _items(action, "cancels"))
        ]
        return {"type": "cancel", "cancels": cancels}, []
    if kind == "cancelByCloid":
        by_cloid: list[dict[str, Any]] = []
        for c in (_obj(c, "a cancel") for c in _items(action, "cancels")):
            asset = _int(c.get("asset"), 2**32)
            _cloid(c.get("cloid"))
            by_cloid.append({"asset": asset, "cloid": c["cloid"]})
        return {"type": "cancelByCloid", "cancels": by_cloid}, []
    if kind == "modify":
        order, wire_ = parse_order(action.get("order"))
        return {"type": "modify", "oid": _ref(action.get("oid")), "order": wire_}, [order]
    if kind == "batchModify":
        mods = [_obj(m, "a modify") for m in _items(action, "modifies")]
        parsed = [parse_order(m.get("order")) for m in mods]
        return {
            "type": "batchModify",
            "modifies": [
                {"oid": _ref(m.get("oid")), "order": c}
                for m, (_, c) in zip(mods, parsed, strict=True)
            ],
        }, [o for o, _ in parsed]
    if kind == "scheduleCancel":
        return (
            {"type": "scheduleCancel"}
            if action.get("time") is None
            else {"type": "scheduleCancel", "time": _int(action["time"])}
        ), []
    if kind == "updateLeverage":
        return {
            "type": "updateLeverage",
            "asset": _int(action.get("asset"), 2**32),
            "isCross": _bool(action.get("isCross")),
            "leverage": _int(action.get("leverage"), 2**32),
        }, []
    if kind == "noop":
        return {"type": "noop"}, []
    raise BadAction(f"unknown action type {kind!r}")


def _ref(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(value)
    return _cloid(value)


def _signature(value: Any) -> dict[str, Any]:
    sig = _obj(value, "signature")
    r, s_, v = sig.get("r"), sig.get("s"), sig.get("v")
    if not (
        isinstance(r, str) and _HEX.fullmatch(r) and isinstance(s_, str) and _HEX.fullmatch(s_)
    ):
        raise BadAction("signature r and s are hex strings")
    _int(v, 256)
    return sig


class ExchangeCore:
    """Authenticates and executes ``/exchange`` bodies against one engine."""

    def __init__(
        self, engine: Engine, *, is_mainnet: bool, client_now: Callable[[], int] | None = None
    ) -> None:
        self.engine = engine
        self.is_mainnet = is_mainnet
        # Nonces and expiries are judged by the clients' time (the market's may run faster).
        self.client_now = client_now or (lambda: engine.now_ms)
        self.nonces = NonceBook()
        self.refused = {"signature": 0, "nonce": 0, "unknown_user": 0, "expired": 0}

    def handle(self, body: Any) -> dict[str, Any]:
        """The exchange's reply to one request body; BadAction when it does not deserialise."""
        if not isinstance(body, dict):
            raise BadAction("the body is an object")
        action, signature, nonce = body.get("action"), body.get("signature"), body.get("nonce")
        nonce = _int(nonce)
        signature = _signature(signature)
        if (
            isinstance(action, dict)
            and isinstance(action.get("type"), str)
            and (action["type"] in USER_SIGNED)
        ):
            return self._user_signed(action, signature, nonce)
        vault = body.get("vaultAddress")
        vault = None if vault is None else _address(vault)
        expires = body.get("expiresAfter")
        expires = None if expires is None else _int(expires)
        signed, orders = canonical(action)
        now = self.client_now()
        try:
            signer = recover_l1(signed, vault, nonce, expires, self.is_mainnet, signature)
        except WireError:
            self.refused["signature"] += 1
            return _err("Invalid signature")
        if expires is not None and expires < now:
            self.refused["expired"] += 1
            return _err("Action already expired")
        user = self.engine.agents.get(signer, signer)
        if user not in self.engine.accounts:
            self.refused["unknown_user"] += 1
            return _err(f"L1 error: User or API Wallet {signer} does not exist.")
        if vault is not None:
            return _err(f"Vault not registered: {vault}")
        refused = self.nonces.use(signer, nonce, now)
        if refused is not None:
            self.refused["nonce"] += 1
            return _err(refused)
        return self._execute(user, signed, orders)

    def _budget_left(self, user: str, items: int, cancels: bool) -> str | None:
        acct = self.engine.accounts[user]
        cap = 10_000 + int(acct.volume)
        if cancels:
            cap = min(cap + CANCEL_EXTRA, 2 * cap)
        if acct.requests + items > cap:
            return (
                f"Too many cumulative requests sent ({acct.requests + items} > {cap}) for "
                f"cumulative volume traded ${acct.volume.quantize(Decimal('0.01'))}. Place "
                "taker orders to free up 1 request per USDC traded."
            )
        return None

    def _execute(
        self, user: str, action: dict[str, Any], orders: list[OrderRequest]
    ) -> dict[str, Any]:
        engine = self.engine
        kind = action["type"]
        n = len(orders) or len(action.get("cancels", ())) or 1
        if n > MAX_ITEMS:
            return _err(f"Signed action over weight limit of {MAX_ITEMS}.")
        refused = self._budget_left(user, n, kind in ("cancel", "cancelByCloid"))
        if refused is not None:
            return _err(refused)
        if kind == "order":
            return _ok("order", engine.place_orders(user, orders))
        if kind == "cancel":
            return _ok("cancel", engine.cancel(user, [(c["a"], c["o"]) for c in action["cancels"]]))
        if kind == "cancelByCloid":
            return _ok(
                "cancel",
                engine.cancel(
                    user, [(c["asset"], str(c["cloid"]).lower()) for c in action["cancels"]]
                ),
            )
        if kind == "modify":
            return _ok("order", [engine.modify(user, action["oid"], orders[0])])
        if kind == "batchModify":
            return _ok(
                "order",
                [
                    engine.modify(user, m["oid"], o)
                    for m, o in zip(action["modifies"], orders, strict=True)
                ],
            )
        engine.accounts[user].requests += 1
        if kind == "scheduleCancel":
            error = engine.schedule_cancel(user, action.get("time"))
        elif kind == "updateLeverage":
            error = engine.update_leverage(
                user, action["asset"], action["isCross"], action["leverage"]
            )
        else:  # noop: its nonce is now used, nothing else
            error = None
        return _err(error) if error else _ok("default")

    def _user_signed(
        self, action: dict[str, Any], signature: dict[str, Any], nonce: int
    ) -> dict[str, Any]:
        if action.get("nonce") != nonce:
            raise BadAction("a user-signed action carries the request's nonce")
        for key in ("signatureChainId", "hyperliquidChain", "agentAddress"):
            if not isinstance(action.get(key), str):
                raise BadAction(f"{key} missing")
        chain_id = action["signatureChainId"]
        if not re.fullmatch(r"0x[0-9a-fA-F]{1,16}", chain_id):
            raise BadAction("signatureChainId is a hex chain id")
        agent_name = action.get("agentName")
        if agent_name is not None and (not isinstance(agent_name, str) or len(agent_name) > 64):
            raise BadAction("agentName is a short string")
        agent = _address(action["agentAddress"])
        expected_chain = "Mainnet" if self.is_mainnet else "Testnet"
        if action["hyperliquidChain"] != expected_chain:
            return _err("Mainnet and testnet require different signature.")
        try:
            master = recover_user_signed(action, signature)
        except WireError:
            self.refused["signature"] += 1
            return _err("Invalid signature")
        if master not in self.engine.accounts:
            self.refused["unknown_user"] += 1
            return _err(f"Must deposit before performing actions. User: {master}")
        refused = self.nonces.use(master, nonce, self.client_now())
        if refused is not None:
            self.refused["nonce"] += 1
            return _err(refused)
        name = agent_name or ""
        owner = self.engine.agents.get(agent)
        if (owner is not None and owner != master) or agent in self.engine.accounts:
            return _err(f"Agent address {agent} is already in use.")
        names = self.engine.agent_names.setdefault(master, {})
        for old, old_name in list(names.items()):  # the same name (or unnamed) is replaced
            if old_name == name:
                del names[old]
                self.engine.agents.pop(old, None)
        names[agent] = name
        self.engine.agents[agent] = master
        return _ok("default")
