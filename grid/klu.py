"""SuiteSparse's KLU through ctypes, as lightsim2grid's core library exports it: ``factorize``
gives a sparse LU factorization (``KLUFactor``) that solves like SciPy's ``SuperLU``, falling back
to SuperLU where the library or its symbols are missing."""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import lightsim2grid
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import SuperLU, splu

# Linear solves of the screen (sensitivities, chord steps) through KLU (see ``KLUFactor``);
# False: SciPy's SuperLU.
USE_KLU = True


class _KLULibrary:
    """SuiteSparse's KLU as lightsim2grid's core library exports it (it solves with KLU itself),
    called through ctypes; None where that library or its symbols are missing."""

    instance: _KLULibrary | None = None
    loaded = False

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, i = ctypes.c_void_p, ctypes.c_int
        lib.klu_defaults.argtypes, lib.klu_defaults.restype = [vp], i
        lib.klu_analyze.argtypes, lib.klu_analyze.restype = [i, vp, vp, vp], vp
        lib.klu_factor.argtypes, lib.klu_factor.restype = [vp, vp, vp, vp, vp], vp
        lib.klu_solve.argtypes, lib.klu_solve.restype = [vp, vp, i, i, vp, vp], i
        lib.klu_free_symbolic.argtypes, lib.klu_free_symbolic.restype = [vp, vp], i
        lib.klu_free_numeric.argtypes, lib.klu_free_numeric.restype = [vp, vp], i
        self.lib = lib

    @classmethod
    def get(cls) -> _KLULibrary | None:
        if not cls.loaded:
            cls.loaded = True
            try:
                path = Path(lightsim2grid.__file__).parent / "liblightsim2grid_core.so"
                klu = cls(ctypes.CDLL(str(path)))
                cls.instance = klu if klu._solves_a_known_system() else None
            except (OSError, AttributeError, RuntimeError):
                cls.instance = None
        return cls.instance

    def _solves_a_known_system(self) -> bool:
        """A 3 x 3 system with a known answer (guards against an incompatible library)."""
        A = sparse.csc_matrix(np.array([[4.0, 1.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 5.0]]))
        x = KLUFactor(self, A).solve(np.array([5.0, 6.0, 6.0]))
        return bool(np.allclose(x, [1.0, 1.0, 1.0], rtol=0.0, atol=1e-12))


def _klu_free(lib: ctypes.CDLL, symbolic: int, numeric: int, common: ctypes.Array) -> None:
    lib.klu_free_numeric(ctypes.byref(ctypes.c_void_p(numeric)), common)
    lib.klu_free_symbolic(ctypes.byref(ctypes.c_void_p(symbolic)), common)


class KLUFactor:
    """A sparse LU factorization by KLU, solving like SciPy's ``SuperLU`` (``shape``,
    ``solve`` of a vector or of a Fortran-ordered block of right-hand sides).

    Several times faster than SuperLU per solve on these Jacobians (kerber_vorstadt's 586 rows:
    ~6 instead of ~35 us), whose supernodes are too small for SuperLU's dense kernels. Each
    column of a block is solved with the same operations as alone (KLU solves columns
    independently)."""

    def __init__(self, klu: _KLULibrary, A: sparse.csc_matrix) -> None:
        self.shape = A.shape
        self._lib = lib = klu.lib
        self._n = n = int(A.shape[0])
        self._common = common = ctypes.create_string_buffer(4096)  # klu_common, with room
        lib.klu_defaults(common)
        Ap = np.ascontiguousarray(A.indptr, dtype=np.int32)
        Ai = np.ascontiguousarray(A.indices, dtype=np.int32)
        Ax = np.ascontiguousarray(A.data, dtype=np.float64)
        symbolic = lib.klu_analyze(n, Ap.ctypes.data, Ai.ctypes.data, common)
        if not symbolic:
            raise RuntimeError("KLU could not analyse the matrix")
        numeric = lib.klu_factor(Ap.ctypes.data, Ai.ctypes.data, Ax.ctypes.data, symbolic, common)
        if not numeric:
            lib.klu_free_symbolic(ctypes.byref(ctypes.c_void_p(symbolic)), common)
            raise RuntimeError("KLU: the matrix is singular")
        self._symbolic, self._numeric = symbolic, numeric
        weakref.finalize(self, _klu_free, lib, symbolic, numeric, common)

    def solve(self, b: np.ndarray) -> np.ndarray:
        x = np.array(b, dtype=np.float64, order="F", copy=True)
        nrhs = 1 if x.ndim == 1 else int(x.shape[1])
        if not self._lib.klu_solve(
            self._symbolic, self._numeric, self._n, nrhs, x.ctypes.data, self._common
        ):
            raise RuntimeError("KLU solve failed")
        return x


def factorize(A: sparse.spmatrix) -> KLUFactor | SuperLU:
    """LU factorization of a square sparse matrix: KLU where lightsim2grid brings it, else
    SciPy's SuperLU (also when KLU finds the matrix singular: SuperLU then says why)."""
    if isinstance(A, sparse.csc_matrix) and A.dtype == np.float64:
        csc = A  # as the solvers give it: no copy (building a SciPy matrix costs ~25 us)
    else:
        csc = sparse.csc_matrix(A, dtype=np.float64)
    if not csc.has_canonical_format:
        csc = csc.copy()
        csc.sum_duplicates()
    klu = _KLULibrary.get() if USE_KLU else None
    if klu is not None and csc.shape[0] > 0:
        try:
            return KLUFactor(klu, csc)
        except RuntimeError:
            pass
    return splu(csc)
