"""The screening session of one ``GridValidator.validate`` run: the accepted AC state, the current
linearization and the open batch (see ``grid.validator`` for how screen, batch confirmation and AC
decisions fit together). A session can be snapshotted and resumed: the validator's prefix cache
keeps such snapshots."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from grid.acmodel import ACModel, Linearization, Measures
from grid.limits import (
    ANGLE_BAND_PU_PER_RAD2,
    BAND_PERCENT,
    BAND_PU,
    BAND_RELATIVE,
    GLOBAL_RELATIVE,
    NOT_CONVERGED,
    REFINE_BAND,
    SCREEN_MAX_MOVE_PU,
    LimitSet,
    Violation,
)
from grid.results import ValidationStats
from grid.verdicts import Reason, Trade, Verdict

# Tried: 0.05 (kerber_vorstadt 164 instead of 177 us of CPU per trade, case33bw 115 instead of 127,
# same verdicts on the bench seed) - rejected: the screen's error grows with the linearization's
# age (see limits.GLOBAL_RELATIVE) and its bands and REFINE_BAND were measured at 0.03.
RELINEARIZE_PU = 0.03


def veto(trade: Trade, violation: Violation, source: str = "ac") -> Verdict:
    return Verdict(
        trade.id,
        False,
        violation.reason,
        violation.element,
        violation.value,
        violation.limit,
        source,
    )


@dataclass(frozen=True)
class _Pending:
    """A relinearization not made yet: the solver's Jacobian and the operating point."""

    jacobian: sparse.csc_matrix | None
    V: np.ndarray


class Session:
    """One ``validate`` run: the accepted AC state, the current linearization and the open batch."""

    log_len = 0

    def __init__(
        self,
        model: ACModel,
        measures: Measures,
        limitset: LimitSet,
        batch_size: int,
        S: np.ndarray | None = None,
    ) -> None:
        """``S``/``measures``: the injections and AC state trades start from (default the base
        state's; applied activations shift both)."""
        self.model = model
        self.limitset = limitset
        self.batch_size = batch_size
        self.S = model.Sbus0.copy() if S is None else S.copy()
        self.measures = measures
        self.inv_V = 1.0 / measures.V  # angle moves of predictions (``_angle_band``)
        # Verdicts as an append-only log of (position, verdict): a snapshot is a length into it.
        self.log: list[tuple[int, Verdict]] = []
        self.ac_solves = 0
        self.resolves = 0  # AC solves again from a fallback start (``ACModel.solve_checked``)
        self.fallbacks = 0
        self.linearizations = 0
        self.screened_in = 0
        self.screened_out = 0
        self.refines = 0
        self.c_branch = model.c_element  # percent of rating per pu current
        # Buses of the trades still to offer (seller, buyer, ...) and the current trade's place.
        self.ahead: list[int] = []
        self.cursor = 0
        self.offered = 0
        # A relinearization is made when the next trade needs it (``_linearization``): the one
        # after a list's last commit would never be used. ``lin_V`` is the operating point of
        # the current or pending linearization; ``pending`` the Jacobian for the pending one.
        self.pending: _Pending | None = None
        self._relinearize()
        self._clear_batch()

    def stats(self, n_trades: int, reused: int = 0) -> ValidationStats:
        return ValidationStats(
            n_trades,
            self.screened_in,
            self.screened_out,
            self.ac_solves,
            self.fallbacks,
            self.linearizations,
            reused,
            self.resolves,
        )

    def snapshot(self) -> Session:
        """A frozen copy of this session's state (cheap: arrays are replaced, never changed in
        place, and the verdict log is shared up to its current length)."""
        snap = copy.copy(self)
        snap.batch = list(self.batch)
        snap.log_len = len(self.log)
        return snap

    def resume(self) -> Session:
        """A live session continuing from this snapshot."""
        live = copy.copy(self)
        live.batch = list(self.batch)
        live.log = self.log[: self.log_len]
        return live

    def plan(self, buses: list[int]) -> None:
        """Buses of the trades to offer next, in order (seller, buyer per trade)."""
        self.ahead = buses
        self.cursor = 0

    def _columns_ahead(self, lin: Linearization, seller: int, buyer: int) -> None:
        """Sensitivities of this trade's buses together with those of the trades expected to
        follow before the next relinearization (as many as the linearizations so far served on
        average): one multi-column solve costs a fraction of one per bus, and a column no trade
        uses is not computed. Which columns go together does not change their values."""
        per_lin = -(-self.offered // self.linearizations)
        first = self.cursor + 2
        lin.prepare([seller, buyer, *self.ahead[first : first + 2 * (per_lin - 1)]])

    @property
    def lin_V(self) -> np.ndarray:
        """The operating point of the pending linearization, else of the current one."""
        return self.pending.V if self.pending is not None else self.lin.V

    def _linearization(self) -> Linearization:
        pending = self.pending
        if pending is not None:
            self.pending = None
            self._relinearize(pending.jacobian, pending.V)
        return self.lin

    def _relinearize(
        self, jacobian: sparse.csc_matrix | None = None, V: np.ndarray | None = None
    ) -> None:
        self.lin = Linearization(self.model, self.measures.V if V is None else V, jacobian)
        self.linearizations += 1

    def _clear_batch(self) -> None:
        me = self.measures
        self.batch: list[tuple[int, Trade]] = []
        self.b_dS = np.zeros_like(self.S)
        # The batch's predicted change, packed like the sensitivity columns:
        # [dvm | dV | di_from | di_to] (see ``acmodel.Layout``).
        self.b_pack = np.zeros(self.model.layout.size, dtype=complex)
        self.b_movedv = np.zeros_like(me.vm_pu)
        self.b_movedl = np.zeros_like(me.loading_percent)
        self.b_loading = me.loading_percent
        self.b_angle = 0.0  # the batch's angle term, in units of moved_v (``_angle_band``)

    def _angle_band(self, dV: np.ndarray) -> float:
        """The voltage band's angle term for a predicted change ``dV`` (complex, every bus)
        from the accepted state, in units of ``moved_v``: ``ANGLE_BAND_PU_PER_RAD2`` times the
        square of the largest angle move (small-angle: ``Im(dV / V)``)."""
        angle = float(np.abs((dV * self.inv_V).imag).max(initial=0.0))
        return ANGLE_BAND_PU_PER_RAD2 / BAND_RELATIVE * angle * angle

    def _with_trade(self, S: np.ndarray, trade: Trade) -> np.ndarray:
        """A copy of injections ``S`` with ``trade`` added."""
        model = self.model
        out = S.copy()
        p_pu = float(trade.p_kw) / 1000.0 / model.base_mva
        out[model.ppci_of_bus[int(trade.seller_bus)]] += p_pu
        out[model.ppci_of_bus[int(trade.buyer_bus)]] -= p_pu
        return out

    def offer(self, pos: int, trade: Trade) -> None:
        """Screen one trade; join the batch when clearly feasible, else decide it with AC."""
        me, model = self.measures, self.model
        lay = model.layout
        self.offered += 1
        lin = self._linearization()
        seller, buyer = int(trade.seller_bus), int(trade.buyer_bus)
        if not (lin.has(seller) and lin.has(buyer)):
            self._columns_ahead(lin, seller, buyer)
        self.cursor += 2
        cs = lin.column(seller)
        cb = lin.column(buyer)
        own = float(trade.p_kw) * (cs.packed - cb.packed)  # this trade's predicted change
        pack = self.b_pack + own  # batch + trade
        vm = me.vm_pu + pack[lay.vm].real
        loading = model.loading(me.i + pack[lay.i])
        # Second-order errors (losses) add up over a batch: bands grow with the sum of the moves.
        # A branch's move is that of its complex current (in percent of its rating), not of its
        # loading: a current change across the phasor barely moves |I| to first order, yet its
        # linearization error does.
        # Losses and voltage changes also shift flows of branches the trade does not cross (a
        # transfer inside one feeder changes the transformer's loading by the change of its
        # losses): every element's band also grows with the largest move anywhere.
        # The largest move is taken in current (pu), then scaled to each branch's own rating.
        moves = np.abs(own)
        own_v = moves[lay.vm]
        di = moves[lay.i]
        own_l = model.loading(di)
        di_max = float(di.max(initial=0.0))
        spread = GLOBAL_RELATIVE / BAND_RELATIVE
        moved_v = self.b_movedv + own_v + spread * float(own_v.max(initial=0.0))
        moved_l = self.b_movedl + own_l + spread * di_max * self.c_branch
        angle_v = self._angle_band(pack[lay.V])
        judged = self.limitset.screen(vm, moved_v + angle_v, loading, moved_l)
        if isinstance(judged, Violation):
            self.screened_out += 1
            self.log.append((pos, veto(trade, judged, "screen")))
            return
        if judged:
            self.screened_in += 1
            self.batch.append((pos, trade))
            self.b_dS = self._with_trade(self.b_dS, trade)
            self.b_pack = pack
            self.b_movedv, self.b_movedl, self.b_loading = moved_v, moved_l, loading
            self.b_angle = angle_v
            if len(self.batch) >= self.batch_size:
                self.flush()
            return
        V1 = me.V + pack[lay.V]
        if float(moved_v.max(initial=0.0)) <= SCREEN_MAX_MOVE_PU:
            refined = self._refine(pos, trade, V1, me.i + pack[lay.i])
            if refined is None:
                return
            V_start: np.ndarray | None = refined
        else:
            V_start = V1
        if self.batch:
            self.flush()
            self._decide(pos, trade)
        else:
            self._decide(pos, trade, V_start)

    def _refine(self, pos: int, trade: Trade, V1: np.ndarray, i1: np.ndarray) -> np.ndarray | None:
        """Second look at a trade the linear screen could not call: one chord Newton step from
        the linear prediction (batch + trade; voltages ``V1``, branch currents ``i1``) removes
        its second-order error, and the band shrinks to a share of that step (``REFINE_BAND``).
        Returns None when decided here (joined the batch or vetoed), else the refined voltages
        as an AC starting point."""
        me, model = self.measures, self.model
        lay = model.layout
        S = self._with_trade(self.S + self.b_dS, trade)
        V2 = self.lin.refine(S, V1)
        if not np.isfinite(V2).all():
            return V1
        self.refines += 1
        m2 = model.measure(V2)
        vm1 = np.abs(V1[model.mon_index])
        step_v = np.full_like(m2.vm_pu, float(np.abs(m2.vm_pu - vm1).max(initial=0.0)))
        step_i = float(np.abs(m2.i - i1).max(initial=0.0))
        step_l = step_i * self.c_branch
        judged = self.limitset.screen(m2.vm_pu, step_v, m2.loading_percent, step_l, REFINE_BAND)
        if isinstance(judged, Violation):
            self.screened_out += 1
            self.log.append((pos, veto(trade, judged, "screen")))
            return None
        if not judged:
            return V2
        self.screened_in += 1
        self.batch.append((pos, trade))
        self.b_dS = S - self.S
        pack = np.empty(lay.size, dtype=complex)
        pack[lay.V] = V2 - me.V
        pack[lay.vm] = m2.vm_pu - me.vm_pu
        pack[lay.i] = m2.i - me.i
        self.b_pack = pack
        # The refined batch state is uncertain by its band; later linear screens add their moves.
        self.b_movedv = step_v * (REFINE_BAND / BAND_RELATIVE)
        self.b_movedl = step_l * (REFINE_BAND / BAND_RELATIVE)
        self.b_loading = m2.loading_percent
        self.b_angle = 0.0  # the refined state has no linearization error left to widen
        if len(self.batch) >= self.batch_size:
            self.flush()
        return None

    def _solve(
        self, S: np.ndarray, V_start: np.ndarray | None = None
    ) -> tuple[Measures | None, Violation | None]:
        self.ac_solves += 1
        accepted = self.measures.V
        before = self.model.resolves
        V = self.model.solve_checked(S, accepted if V_start is None else V_start, accepted)
        self.resolves += self.model.resolves - before
        if isinstance(V, Violation):
            return None, V
        me = self.model.measure(V)
        balance = self.limitset.balance
        if balance is not None:  # islanded: the island's balance before voltages and loadings
            model = self.model
            short = balance.check(balance.power_kw(model.Ybus, S, V, model.base_mva))
            if short is not None:
                return me, short
        return me, self.limitset.check(me.vm_pu, me.loading_percent)

    def _commit(self, S: np.ndarray, me: Measures, final: bool = False) -> None:
        """Accept an AC state; ``final``: the list's last one (no linearization needed)."""
        self.S = S
        self.measures = me
        self.inv_V = 1.0 / me.V
        if not final and float(np.max(np.abs(me.V - self.lin_V))) > RELINEARIZE_PU:
            self.pending = _Pending(self.model.last_jacobian(), me.V)

    def _decide(
        self, pos: int, trade: Trade, V_start: np.ndarray | None = None, final: bool = False
    ) -> None:
        S = self._with_trade(self.S, trade)
        me, violation = self._solve(S, V_start)
        if violation is not None or me is None:
            self.log.append((pos, veto(trade, violation or NOT_CONVERGED)))
            return
        self.log.append((pos, Verdict(trade.id, True, Reason.APPROVED)))
        self._commit(S, me, final)

    def _as_predicted(self, me: Measures) -> bool:
        """Whether the AC state of the batch lies within the bands the screen assumed around its
        prediction. Passing the AC check proves the batch's final set feasible, not each prefix:
        when the screen erred by more than it assumed, a trade inside the batch may have been
        infeasible when taken (and relieved by a later one), so the batch is re-decided."""
        err_v = np.abs(me.vm_pu - (self.measures.vm_pu + self.b_pack[self.model.layout.vm].real))
        err_l = np.abs(me.loading_percent - self.b_loading)
        return bool(
            np.all(err_v <= BAND_PU + BAND_RELATIVE * (self.b_movedv + self.b_angle))
            and np.all(err_l <= BAND_PERCENT + BAND_RELATIVE * self.b_movedl)
        )

    def flush(self, final: bool = False) -> None:
        """Confirm the open batch with one AC power flow; re-decide it trade by trade if that
        fails."""
        if not self.batch:
            return
        batch = self.batch
        S = self.S + self.b_dS
        me, violation = self._solve(S, self.measures.V + self.b_pack[self.model.layout.V])
        if me is not None and violation is None and self._as_predicted(me):
            for pos, trade in batch:
                self.log.append((pos, Verdict(trade.id, True, Reason.APPROVED)))
            self._commit(S, me, final)
            self._clear_batch()
            return
        self.fallbacks += 1
        self._clear_batch()
        for pos, trade in batch:
            self._decide(pos, trade, final=final)
        self._clear_batch()
