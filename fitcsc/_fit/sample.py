"""Sampling a log density of an unconstrained vector ``z``: NUTS or ChEES-HMC, many chains.

`sample` runs ``num_chains`` chains vectorized (one `jax.vmap`-ed program) from a warm
start (e.g. a MAP, `fitcsc.fit_map`), in two phases, warm-up and sampling, compiled
once (ahead of time, so compile time is reported apart) and run in chunks so that
progress can be shown:

- ``method="nuts"``: NumPyro's NUTS kernel (windowed step-size and mass-matrix
  adaptation, diagonal or ``dense_mass=True``). Under `vmap` every chain waits for the
  longest trajectory of the batch at each iteration (lockstep).
- ``method="chees"``: BlackJAX's ChEES adaptation (Hoffman, Radul & Sountsov 2021) of a
  jittered-trajectory HMC: the step size and one trajectory length are tuned across all
  chains, so every chain takes the same number of leapfrog steps and lockstep costs
  nothing; with a diagonal mass matrix estimated from the ensemble.

A density with a `fitcsc.ParameterSpace` on the natural scale becomes a density of
``z`` with `z_log_density` (adds the log-Jacobian).

```python
post = fitcsc.sample(pop.log_density, z_map, num_chains=8, method="chees")
post.z.shape            # (8, num_samples, d)
post.timing             # compile_s, warmup_s, sampling_s
```
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FitcscInputError

METHODS = ("nuts", "chees")
WARMUP_STATS = {  # per warm-up step, over the chains run in lockstep
    "step_size": "step size (ChEES: the one shared; NUTS: the median over chains)",
    "n_leapfrog": "leapfrog steps of the step, the most over chains (what a vmapped step "
                  "costs)",
    "acceptance_rate": "mean acceptance probability over chains",
    "n_divergent": "chains whose transition diverged",
}


class Posterior(NamedTuple):
    """Draws of ``z`` and per-draw sampler statistics (ArviZ names)."""

    z: np.ndarray  # (num_chains, num_samples, d)
    sample_stats: dict[str, np.ndarray]  # each (num_chains, num_samples)
    method: str
    timing: dict[str, float]  # compile_s, warmup_s, sampling_s [s]
    settings: dict[str, Any]
    warmup_stats: dict[str, np.ndarray] | None = None  # each (num_warmup,): WARMUP_STATS

    @property
    def num_divergent(self) -> int:
        """Divergent transitions after warm-up (a failed ODE solve counts as one)."""
        return int(np.sum(self.sample_stats["diverging"]))


def z_log_density(space, log_density_natural: Callable) -> Callable:
    """``z -> log_density_natural(space.from_z(z)) + space.log_jacobian(z)``: a density
    written on a `fitcsc.ParameterSpace`'s natural scale, as a density of ``z``."""

    def log_density(z):
        return log_density_natural(space.from_z(z)) + space.log_jacobian(z)

    return log_density


def _chunk(num_warmup: int, num_samples: int, progress: bool) -> int:
    """Steps per compiled call: a divisor of both phases (at most a tenth of the shorter
    with progress, else the whole common divisor)."""
    g = math.gcd(num_warmup, num_samples) if num_warmup else num_samples
    if not progress:
        return g
    cap = max(1, min(x for x in (num_warmup, num_samples) if x) // 10)
    return max(d for d in range(1, g + 1) if g % d == 0 and d <= cap)


def _nuts(log_density, num_warmup, dense_mass, target_accept_prob, max_tree_depth):
    from numpyro.infer import NUTS

    kernel = NUTS(potential_fn=lambda z: -log_density(z), dense_mass=dense_mass,
                  target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)

    def init(keys, z0):
        return kernel.init(keys, num_warmup, init_params=z0)

    def step(states, key):
        del key
        states = kernel.sample(states, (), {})  # vmapped by NUTS.init on a batch of keys
        stats = {"diverging": states.diverging, "acceptance_rate": states.accept_prob,
                 "n_steps": states.num_steps, "energy": states.energy,
                 "lp": -states.potential_energy, "step_size": states.adapt_state.step_size}
        return states, states.z, stats

    return init, step


def warmup_summary(warmup_stats: dict | None) -> dict | None:
    """A `Posterior`'s warm-up in a few numbers (summary.json): the final step size,
    the leapfrog steps per step (median over the last half, most over all), the mean
    acceptance over the last half and the divergences; None without warm-up."""
    if not warmup_stats or not len(warmup_stats["step_size"]):
        return None
    w = {k: np.asarray(v, float) for k, v in warmup_stats.items()}
    half = w["step_size"].size // 2
    return {"final_step_size": float(w["step_size"][-1]),
            "n_leapfrog_median_last_half": float(np.median(w["n_leapfrog"][half:])),
            "n_leapfrog_max": float(np.max(w["n_leapfrog"])),
            "acceptance_rate_last_half": float(np.mean(w["acceptance_rate"][half:])),
            "n_divergent": int(np.sum(w["n_divergent"]))}


def _warmup_trace(stats) -> dict:
    """`WARMUP_STATS` of one step of NUTS's chains from their statistics."""
    return {"step_size": jnp.median(stats["step_size"]),
            "n_leapfrog": jnp.max(stats["n_steps"]),
            "acceptance_rate": jnp.mean(stats["acceptance_rate"]),
            "n_divergent": jnp.sum(stats["diverging"])}


def _chees(log_density, num_chains, num_warmup, num_samples, step_size0, learning_rate,
           max_leapfrog_steps=1000, on_step=None):
    import blackjax
    import optax
    from blackjax.mcmc import dynamic_hmc

    def keep(state, info, adaptation):  # what the warm-up scan keeps: WARMUP_STATS
        trace = {"step_size": adaptation.step_size,  # the leapfrog steps taken (jittered,
                 # and after BlackJAX's trajectory-length floor), not the adapted length
                 "n_leapfrog": jnp.max(info.num_integration_steps),
                 "acceptance_rate": jnp.mean(info.acceptance_rate),
                 "n_divergent": jnp.sum(info.is_divergent)}
        if on_step is not None:
            jax.debug.callback(on_step, trace)
        return trace

    max_bits = math.ceil(math.log2(num_warmup + num_samples))
    warm = blackjax.chees_adaptation(log_density, num_chains, adaptation_info_fn=keep,
                                     mass_matrix_estimation="diagonal",
                                     max_leapfrog_steps=int(max_leapfrog_steps))

    def warmup(key, z0):
        """``(carry, trace)``: the chains and adapted kernel, and `WARMUP_STATS` per step."""
        (states, params), info = warm.run(key, z0, step_size0, optax.adam(learning_rate),
                                          num_warmup, max_sampling_steps=num_samples)
        trace = getattr(info, "_wrapped_info", info)  # BlackJAX may wrap the scan's info
        return (states, (params["step_size"], params["inverse_mass_matrix"],
                         params["integration_steps_params"][0])), {
            k: jnp.asarray(trace[k], float) for k in WARMUP_STATS}

    kernel = dynamic_hmc.build_kernel(
        next_random_arg_fn=lambda i: i + 1,
        integration_steps_fn=lambda i, n: jnp.asarray(
            jnp.ceil(dynamic_hmc.halton_sequence(i, max_bits) * n), int))

    def step(carry, key):
        states, (eps, inv_mass, n_leap) = carry
        keys = jax.random.split(key, num_chains)
        states, info = jax.vmap(lambda k, s: kernel(k, s, log_density, eps, inv_mass, (n_leap,))
                                )(keys, states)
        n = jax.vmap(lambda i: jnp.ceil(dynamic_hmc.halton_sequence(i, max_bits) * n_leap))(
            states.random_generator_arg - 1).astype(int)  # leapfrog steps of this draw
        stats = {"diverging": info.is_divergent, "acceptance_rate": info.acceptance_rate,
                 "n_steps": n, "energy": info.energy, "lp": states.logdensity,
                 "step_size": jnp.broadcast_to(eps, (num_chains,))}
        return (states, (eps, inv_mass, n_leap)), states.position, stats

    return warmup, step


def finish_stats(stats: dict) -> dict:
    """Sampler statistics as `Posterior` keeps them (NumPy; ``tree_depth`` added)."""
    out = {k: np.asarray(v) for k, v in stats.items()}
    out["diverging"] = out["diverging"].astype(bool)
    out["tree_depth"] = np.floor(np.log2(np.maximum(out["n_steps"], 1))).astype(int) + 1
    return out


def _scan(step, n, thinning=1):
    """``n`` kept draws, each after ``thinning`` sampler steps (every ``thinning``-th
    draw is kept). The step keys are ``jax.random.split(key, n * thinning)`` in order
    whatever the thinning, so a thinned run's draws are every ``thinning``-th draw of
    an unthinned run of ``n * thinning`` steps from the same carry and key. A kept
    draw's ``diverging`` is whether any of its ``thinning`` steps diverged; its other
    statistics are those of the kept step."""

    def run(carry, key):
        def body(c, k):
            c, z, stats = step(c, k)
            return c, (z, stats)

        if thinning == 1:
            return jax.lax.scan(body, carry, jax.random.split(key, n))

        def thinned(c, ks):
            c, (z, stats) = jax.lax.scan(body, c, ks)
            kept = jax.tree_util.tree_map(lambda x: x[-1], (z, stats))
            kept[1]["diverging"] = jnp.any(stats["diverging"], axis=0)
            return c, kept

        keys = jax.random.split(key, n * thinning).reshape(n, thinning)
        return jax.lax.scan(thinned, carry, keys)

    return jax.jit(run)


class _CarryStore:
    """Sampler pytrees (chain states, adapted kernel, draws) to and from a checkpoint's
    arrays. `save` returns the tree as `load` would give it back, so a run continues
    from exactly what a resumed run starts from. PRNG keys are stored as key data."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.treedef = {}  # of each kind of part: "warmup", "draws"

    def save(self, name, tree):
        if self.checkpoint is None:
            return tree
        leaves, self.treedef[name.split("_")[0]] = jax.tree_util.tree_flatten(tree)
        arrays = {}
        for j, x in enumerate(leaves):
            is_key = jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
            arrays[f"{'key' if is_key else 'leaf'}_{j:04d}"] = np.asarray(
                jax.random.key_data(x) if is_key else x)
        self.checkpoint.save(name, arrays)
        return self._tree(name, arrays)

    def load(self, name, shape_of=None):
        """The tree saved as ``name`` or None; ``shape_of()`` gives its structure when no
        tree has been seen yet (e.g. `jax.eval_shape` of the warm-up)."""
        arrays = None if self.checkpoint is None else self.checkpoint.load(name)
        if arrays is None:
            return None
        kind = name.split("_")[0]
        if kind not in self.treedef:
            self.treedef[kind] = jax.tree_util.tree_structure(shape_of())
        return self._tree(name, arrays)

    def _tree(self, name, arrays):
        leaves = [jax.random.wrap_key_data(jnp.asarray(v)) if k.startswith("key")
                  else jnp.asarray(v) for k, v in sorted(arrays.items(),
                                                         key=lambda kv: kv[0][-4:])]
        return jax.tree_util.tree_unflatten(self.treedef[name.split("_")[0]], leaves)


def _check(method, num_warmup, num_samples, num_chains, dense_mass, thinning=1,
           max_leapfrog_steps=1000):
    if method not in METHODS:
        raise ValueError(f"sample: method must be one of {METHODS}, got {method!r}")
    if dense_mass and method != "nuts":
        raise ValueError("sample: dense_mass=True needs method='nuts'")
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples),
                    ("num_chains", num_chains), ("thinning", thinning),
                    ("max_leapfrog_steps", max_leapfrog_steps)):
        if int(v) != v or v < (0 if name == "num_warmup" else 1):
            raise ValueError(f"sample: {name} must be an integer >= "
                             f"{0 if name == 'num_warmup' else 1}, got {v!r}")
    if method == "chees" and num_chains < 2:
        raise ValueError("sample: method='chees' adapts across chains; use num_chains >= 2")


def run_chains(
    log_density: Callable[[jax.Array], jax.Array],
    z0: jax.Array,
    key: jax.Array,
    *,
    method: str = "chees",
    num_warmup: int = 500,
    num_samples: int = 500,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    step_size: float = 0.1,
    learning_rate: float = 0.025,
    thinning: int = 1,
    max_leapfrog_steps: int = 1000,
):
    """`sample`'s warm-up and sampling as one pure function of ``(z0, key)``, to trace
    inside `jax.jit` and `jax.vmap` (e.g. over simulated data sets).

    ``z0``: ``(num_chains, d)`` starts. ``thinning``: keep every ``thinning``-th draw
    after warm-up (``num_samples * thinning`` sampler steps per chain); the kept draws
    are exactly every ``thinning``-th draw of the run with ``thinning=1`` and
    ``num_samples * thinning`` draws, same key. **Returns:** ``(z, stats)``: draws
    ``(num_samples, num_chains, d)`` and `Posterior`'s statistics, each ``(num_samples,
    num_chains)`` (``diverging``: any divergence among a kept draw's steps).
    """
    num_chains = z0.shape[0]
    _check(method, num_warmup, num_samples, num_chains, dense_mass, thinning,
           max_leapfrog_steps)
    steps = num_samples * thinning
    key_warm, key_run = jax.random.split(key)
    if method == "nuts":
        init, step = _nuts(log_density, num_warmup, dense_mass, target_accept_prob,
                           max_tree_depth)
        carry = init(jax.random.split(key_warm, num_chains), z0)
        if num_warmup:  # NUTS's keys live in its states: the scan keys are not used
            carry, _ = _scan(step, num_warmup)(carry, jax.random.fold_in(key_run, 1))
    else:
        warmup, step = _chees(log_density, num_chains, num_warmup, steps, step_size,
                              learning_rate, max_leapfrog_steps)
        carry, _ = warmup(key_warm, z0)
    _, (z, stats) = _scan(step, num_samples, thinning)(carry, key_run)
    return z, stats


def sample(
    log_density: Callable[[jax.Array], jax.Array],
    z_init: Any,
    *,
    method: str = "nuts",
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    step_size: float = 0.1,
    learning_rate: float = 0.025,
    init_scale: float = 0.1,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint=None,
    thinning: int = 1,
    max_leapfrog_steps: int = 1000,
) -> Posterior:
    """Sample ``log_density`` (of ``z``, shape ``(d,)``) with ``num_chains`` vectorized chains.

    **Arguments:**
    - `log_density`: ``z -> scalar`` log posterior density of the unconstrained ``z``
      (log-Jacobian included; see `z_log_density`), differentiable by `jax.grad`; ``-inf``
      where the model cannot be evaluated (a divergence, never an exception).
    - `z_init`: the warm start, ``(d,)`` (each chain at ``z_init + init_scale *
      Normal(0, 1)``) or ``(num_chains, d)``; e.g. the MAP from `fitcsc.fit_map`.
    - `method`: ``"nuts"`` (NumPyro) or ``"chees"`` (BlackJAX ChEES-HMC).
    - `num_warmup`, `num_samples`, `num_chains`: per chain; `num_samples` is the number
      of draws kept per chain.
    - `thinning`: keep every `thinning`-th draw after warm-up (an integer >= 1; default
      1, every draw): the sampling phase takes ``num_samples * thinning`` steps per chain
      (its time, in ``sampling_s``, grows with it) and keeps ``num_samples``, for
      near-independent draws at a fraction of the memory. A kept draw's ``diverging``
      says whether any of its ``thinning`` steps diverged; its other statistics are
      those of its own step. ChEES's jitter covers all ``num_samples * thinning`` steps.
    - `dense_mass`: NUTS only: adapt a dense mass matrix (default diagonal).
    - `target_accept_prob`, `max_tree_depth`: NUTS options.
    - `step_size`, `learning_rate`: ChEES's first step size and its Adam learning rate.
    - `max_leapfrog_steps`: ChEES's cap on leapfrog steps per transition (BlackJAX's
      default 1000): what one step can cost at most, in gradient evaluations. BlackJAX
      floors the trajectory at the posterior's widest whitened direction once its
      mass-matrix window fills, so on a strongly correlated posterior with a small step
      size the steps climb toward this cap (`warmup_stats` shows it).
    - `seed`: integer seed (jitter and sampler).
    - `progress`: ``callback(phase, done, total)`` called after every chunk of steps,
      ``phase`` ``"warmup"`` or ``"sampling"`` (`fitcsc.population.progress_printer`). A
      callback with a ``diagnostics`` keyword also gets, during warm-up, the latest
      step's `WARMUP_STATS` (floats), to watch step size and trajectory length adapt,
      and during sampling ``{"n_divergent": ...}``, the divergences so far; one with a
      ``draws`` keyword gets, during sampling, the draws so far ``(num_chains, done,
      d)``, to watch the chains converge (`progress_printer` shows their R-hat).
    - `checkpoint`: a `fitcsc._io.checkpoint.Checkpoint` (``load(name)``, ``save(name,
      arrays)``): the chain states and adapted kernel after warm-up (``warmup``) and
      every chunk of draws with the chain states after it (``draws_00003``) are saved;
      parts already there are loaded, not rerun, so an interrupted run resumes to the
      same draws (each chunk's key depends on its index only). NUTS's warm-up is saved
      when it ends (an interruption during it reruns it). NUTS's draws do not depend on
      how many follow, so a NUTS run resumed after its warm-up may ask for another
      ``num_samples``, a multiple of the saved chunks' draws: more extend the chains
      from the last saved state (the first draws are the interrupted run's), fewer stop
      early.

    **Returns:** a `Posterior`: ``z`` ``(num_chains, num_samples, d)``, ``sample_stats``
    (``diverging``, ``acceptance_rate``, ``n_steps`` (gradient evaluations), ``energy``,
    ``lp``, ``step_size``, ``tree_depth``), ``timing`` (``compile_s``, ``warmup_s``,
    ``sampling_s``; compile apart from both; NUTS also ``init_s``, its initial step-size
    search with its compilation), ``settings`` and ``warmup_stats`` (`WARMUP_STATS`, each
    ``(num_warmup,)``: how the adaptation went, and what each warm-up step cost).

    **Raises:** `ValueError` for an unknown method, a bad shape, a bad count (`thinning`
    included) or a non-finite start.
    """
    _check(method, num_warmup, num_samples, num_chains, dense_mass, thinning,
           max_leapfrog_steps)
    z0 = jnp.asarray(z_init, dtype=float)
    key_init, key_warm, key_run = jax.random.split(jax.random.key(seed), 3)
    if z0.ndim == 1:
        z0 = z0[None, :] + init_scale * jax.random.normal(key_init, (num_chains, z0.shape[0]))
    elif z0.shape[:1] != (num_chains,) or z0.ndim != 2:
        raise ValueError(f"sample: z_init must have shape (d,) or (num_chains={num_chains}, d),"
                         f" got {z0.shape}")
    lp0 = jax.jit(jax.vmap(log_density))(z0)
    if not bool(jnp.all(jnp.isfinite(z0))) or not bool(jnp.all(jnp.isfinite(lp0))):
        raise ValueError("sample: the start has non-finite entries or a non-finite log "
                         "density (a failed solve?); start from a MAP or a valid point")
    timing = {"compile_s": 0.0, "warmup_s": 0.0, "sampling_s": 0.0}
    report = progress or (lambda phase, done, total: None)
    takes = set() if progress is None else set(inspect.signature(progress).parameters)
    wants, wants_draws = "diagnostics" in takes, "draws" in takes
    latest = {}  # the last warm-up step's WARMUP_STATS, for a callback that wants them

    def report_warmup(done):
        if wants:
            progress("warmup", done, num_warmup,
                     diagnostics={k: float(v) for k, v in latest.items()})
        else:
            report("warmup", done, num_warmup)
    # with a checkpoint, chunks as with progress whatever the progress: the draws of a
    # resumed run must not depend on whether either run printed progress
    chunk = _chunk(num_warmup, num_samples, progress is not None or checkpoint is not None)
    store = _CarryStore(checkpoint)
    first = None  # NUTS resumed after its warm-up: the first saved chunk of draws

    if method == "nuts":
        init, step = _nuts(log_density, num_warmup, dense_mass, target_accept_prob,
                           max_tree_depth)
        keys_warm = jax.random.split(key_warm, num_chains)
        trace_shape = {k: jax.ShapeDtypeStruct((num_warmup,), jnp.result_type(float))
                       for k in WARMUP_STATS}
        saved = store.load("warmup", lambda: (jax.eval_shape(init, keys_warm, z0),
                                              trace_shape))
        carry, trace = (None, None) if saved is None else saved
        phases = [("sampling", num_samples)]
        if carry is None:
            t = time.perf_counter()  # NUTS's initial step-size search, compiled
            carry = jax.block_until_ready(jax.jit(init)(keys_warm, z0))
            timing["init_s"] = time.perf_counter() - t
            phases.insert(0, ("warmup", num_warmup))
        else:  # resumed after the warm-up: the saved chunks of draws set the chunk size
            # (NUTS's draws do not depend on how many follow, so the run may ask for more
            # or fewer draws than the interrupted one, in whole chunks)
            first = store.load("draws_00000", lambda: jax.eval_shape(
                _scan(step, chunk, thinning), carry, key_run))
            if first is not None:
                saved_chunk = int(first[1][0].shape[0])
                if num_samples % saved_chunk:
                    raise FitcscInputError(
                        f"the checkpoint's chunks hold {saved_chunk} draws per chain; "
                        f"resume with a multiple of {saved_chunk} draws (or start over)",
                        expected="a number of draws per chain that is a multiple of "
                        f"{saved_chunk}", value=num_samples)
                chunk = saved_chunk
    else:
        done = [0]

        def tick(trace):  # one warm-up step done (a host callback from the compiled loop)
            done[0] += 1
            latest.update(trace)
            if done[0] % chunk == 0 and done[0] < num_warmup:
                report_warmup(done[0])

        warmup, step = _chees(log_density, num_chains, num_warmup, num_samples * thinning,
                              step_size, learning_rate, max_leapfrog_steps,
                              on_step=tick if progress is not None else None)
        saved = store.load("warmup", lambda: jax.eval_shape(warmup, key_warm, z0))
        if saved is None:
            t = time.perf_counter()
            compiled = jax.jit(warmup).lower(key_warm, z0).compile()
            timing["compile_s"] += time.perf_counter() - t
            report("warmup", 0, num_warmup)
            t = time.perf_counter()
            saved = store.save("warmup", jax.block_until_ready(compiled(key_warm, z0)))
            timing["warmup_s"] = time.perf_counter() - t
            report_warmup(num_warmup)
        carry, trace = saved
        phases = [("sampling", num_samples)]

    runs = {}  # compiled chunk of each phase (one program when not thinning)
    draws, stats, warm = [], [], []
    n_divergent = 0  # after warm-up, so far (for a progress callback)
    # each phase's keys: NUTS warm-up 0, sampling 1; ChEES sampling 0 (its warm-up apart)
    fold = {"warmup": 0, "sampling": int(method == "nuts")}
    for phase, total in phases:
        report(phase, 0, total)
        t = time.perf_counter()
        thin = thinning if phase == "sampling" else 1
        for i, key in enumerate(jax.random.split(jax.random.fold_in(key_run, fold[phase]),
                                                 total // chunk)):
            name = f"draws_{i:05d}"
            if phase == "sampling" and i == 0 and first is not None:
                got = first  # loaded above, to read its size
            else:
                got = store.load(name, lambda c=carry: jax.eval_shape(
                    _scan(step, chunk, thinning), c, key_run)) if phase == "sampling" else None
            if got is not None:
                carry, (z, st) = got
                if z.shape[0] != chunk:  # ChEES's draws depend on num_samples: no resize
                    raise FitcscInputError(
                        f"the checkpoint's {name} holds {z.shape[0]} draws per chain, not "
                        f"{chunk}", expected="the interrupted run's num_warmup and "
                        "num_samples", value=(num_warmup, num_samples))
            else:
                if thin not in runs:
                    tc = time.perf_counter()
                    runs[thin] = _scan(step, chunk, thin).lower(carry, key_run).compile()
                    timing["compile_s"] += time.perf_counter() - tc
                carry, (z, st) = runs[thin](carry, key)
                jax.block_until_ready(z)
                if phase == "sampling":
                    carry, (z, st) = store.save(name, (carry, (z, st)))
            if phase == "sampling":
                draws.append(z)
                stats.append(st)
                n_divergent += int(np.sum(np.asarray(st["diverging"])))
                if wants or wants_draws:  # the draws so far, to watch them converge
                    extra = {"diagnostics": {"n_divergent": n_divergent}} if wants else {}
                    if wants_draws:
                        extra["draws"] = np.swapaxes(
                            np.concatenate([np.asarray(d) for d in draws]), 0, 1)
                    progress(phase, (i + 1) * chunk, total, **extra)
                else:
                    report(phase, (i + 1) * chunk, total)
            else:
                warm.append(jax.vmap(_warmup_trace)(st))
                latest.update({k: v[-1] for k, v in warm[-1].items()})
                report_warmup((i + 1) * chunk)
        timing[f"{phase}_s"] = time.perf_counter() - t
        if phase == "warmup":
            trace = {k: (jnp.concatenate([w[k] for w in warm]) if warm
                         else jnp.zeros((0,))).astype(float) for k in WARMUP_STATS}
            carry, trace = store.save("warmup", (carry, trace))

    z = np.swapaxes(np.concatenate([np.asarray(d) for d in draws]), 0, 1)
    out = finish_stats({k: np.swapaxes(np.concatenate([np.asarray(s[k]) for s in stats]), 0, 1)
                        for k in stats[0]})
    settings = {"method": method, "num_warmup": int(num_warmup),
                "num_samples": int(num_samples), "num_chains": int(num_chains),
                "thinning": int(thinning),
                "dense_mass": bool(dense_mass), "seed": int(seed)}
    if method == "nuts":
        settings.update(target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth)
    else:
        settings.update(learning_rate=learning_rate, step_size0=step_size,
                        max_leapfrog_steps=int(max_leapfrog_steps))
    warmup_stats = None if trace is None else {k: np.asarray(trace[k]) for k in WARMUP_STATS}
    return Posterior(z=z, sample_stats=out, method=method, timing=timing, settings=settings,
                     warmup_stats=warmup_stats)
