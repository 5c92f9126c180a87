"""Privacy mutation harness: every privacy-critical mutation must be killed by a named test.

    . .venv/bin/activate
    nice -n 10 python tests/privacy_mutants.py               # every mutation (7-13 min on 2 cores)
    python tests/privacy_mutants.py --list                   # the catalogue, and whether it is in sync
    python tests/privacy_mutants.py --only noise_scale_halved --only ledger_record_noop
    python tests/privacy_mutants.py --jobs 1 --no-baseline   # one worker; skip the unmutated run

Each mutation of the catalogue below is a small semantic change of privacy-critical code (an exact
`old` snippet of one file and its `new` replacement). It is applied to a scratch copy of the
working tree (tracked and untracked files; not .git, .venv, runs, caches), and the mutation's
tests run there: `python -m pytest -x -q -p no:cacheprovider <node ids>` with the copy as the
working directory and first on PYTHONPATH, so that `import dpjax` / `import experiments` resolve
to the mutated copy and not to the editable install of /work/main (a canary mutation that breaks
`import dpjax` is run first to prove it). Output, one line per mutation:

    KILLED <name> by <test node id>      a test failed on the mutant
    SURVIVED <name>                      every test passed: add a test that catches it

then a summary. Exit status 0 only when every mutation is killed; 1 when one survives or its run
went wrong (a timeout, a node id that no longer exists, a killing test that also fails on the
unmutated tree); 2 when an `old` snippet is not found exactly once in its file (the catalogue is
out of sync with the code: update the snippet). The unmutated tree's run of all selected tests
(the baseline) guards against kills by an already failing or flaky test; `--no-baseline` skips it.

This file is not collected by pytest (its name does not start with test_).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
IGNORED = (".git", ".venv", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
           "build", "workdir*", "*.pyc")
PYTEST = ("-x", "-q", "-p", "no:cacheprovider", "-rfE")
TIMEOUT_S = 600
# Scheduling only: tests that take longest, slowest last.
SLOW_TESTS = ("over_expected_batch", "[conv-", "test_parallel.py::test_parallel")


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  description: str
  file: str  # relative to the repository root
  old: str  # must occur exactly once in `file`
  new: str
  tests: tuple[str, ...]  # test files or node ids, run in this order with -x


M = Mutation

# --------------------------------------------------------------------------------- the catalogue

_NOISE_SHARE_OLD = """\
      summed = noise.add_noise_share(
          key, summed, scale=config.noise_multiplier * sensitivity, mechanism=config.mechanism,
          share=jax.lax.axis_index(parallel.BATCH_AXIS), shares=mesh.shape[parallel.BATCH_AXIS])
"""

# The classic data-parallel bug: each device noises its own partial sum, then the sums are added.
_NOISE_ON_EVERY_DEVICE = """\
      device_key = jax.random.fold_in(key, jax.lax.axis_index(parallel.BATCH_AXIS))
      summed = jax.tree.map(lambda s, z: s + config.noise_multiplier * sensitivity * z, summed,
                            noise.tree_noise(device_key, summed, config.mechanism))
"""

# Shares that do not partition the coordinates: every device adds the first device's stretch.
_NOISE_SHARES_OVERLAP = """\
      summed = noise.add_noise_share(
          key, summed, scale=config.noise_multiplier * sensitivity, mechanism=config.mechanism,
          share=0, shares=mesh.shape[parallel.BATCH_AXIS])
"""

CATALOGUE: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ noise (dpjax/noise.py)
    M("noise_scale_halved", "Gaussian noise std sigma*C/2 instead of sigma*C",
      "dpjax/noise.py",
      "  scale = noise_multiplier * sensitivity\n",
      "  scale = 0.5 * noise_multiplier * sensitivity\n",
      ("tests/test_noise.py::test_noise_std_is_sigma_times_sensitivity_over_expected_batch[l2-1.0]",)),
    M("noise_scale_without_sensitivity", "noise std sigma instead of sigma*C (C != 1 leaks)",
      "dpjax/noise.py",
      "  scale = noise_multiplier * sensitivity\n",
      "  scale = noise_multiplier\n",
      ("tests/test_noise.py::test_noise_std_is_sigma_times_sensitivity_over_expected_batch[l2-1.0]",)),
    M("noise_drawn_in_bf16", "unit noise drawn in bfloat16 (quantised to 8 bits), then cast up",
      "dpjax/threefry.py",
      "  return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)\n",
      "  return (np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)).astype(jnp.bfloat16).astype(jnp.float32)\n",
      ("tests/test_noise.py::test_noise_is_not_quantised_to_bfloat16[unrolled]",)),
    M("noise_drawn_in_bf16_small_trees", "jax.random's unit noise (small trees) drawn in bfloat16, then cast up",
      "dpjax/noise.py",
      "    flat = jax_sample(key, (sum(sizes),), jnp.float32)\n",
      "    flat = jax_sample(key, (sum(sizes),), jnp.bfloat16).astype(jnp.float32)\n",
      ("tests/test_noise.py::test_noise_is_not_quantised_to_bfloat16[jax_random]",)),
    M("noise_leaves_share_one_stretch", "every leaf draws the noise vector's first stretch: leaves' noise equal",
      "dpjax/noise.py",
      "  noise = [sample(raw, leaf.size, offset).reshape(leaf.shape)\n",
      "  noise = [sample(raw, leaf.size, 0).reshape(leaf.shape)\n",
      ("tests/test_noise.py::test_leaves_get_independent_float32_noise_of_their_own_shape[unrolled]",)),
    M("noise_ignores_key", "the generator encrypts the counters under a fixed key: noise is public",
      "dpjax/threefry.py",
      "  y0, y1 = threefry2x32(key, counter, jnp.zeros_like(counter))\n  return y0 ^ y1\n",
      "  y0, y1 = threefry2x32(jnp.zeros(2, jnp.uint32), counter, jnp.zeros_like(counter))\n  return y0 ^ y1\n",
      ("tests/test_noise.py::test_noise_depends_on_key_and_step[unrolled]",)),
    # ------------------------------------------------------------ the DP step (dpjax/train.py)
    M("noise_key_reused_across_steps", "step_key returns the base key: every step adds the same noise",
      "dpjax/train.py",
      "  return jax.random.fold_in(state.noise_key, state.step)\n",
      "  return state.noise_key\n",
      ("tests/test_train.py::test_noise_of_successive_steps_is_fresh",)),
    M("normalised_by_realised_batch", "noisy sum divided by the realised (private) batch size",
      "dpjax/train.py",
      "      expected_batch_size=config.expected_batch_size, mechanism=config.mechanism)\n",
      "      expected_batch_size=metrics.num_examples, mechanism=config.mechanism)\n",
      ("tests/test_noise.py::test_noise_std_is_sigma_times_sensitivity_over_expected_batch[l2-1.0]",)),
    M("per_layer_sensitivity_ignored", "noise scaled by clip_norm, not the per-layer sqrt(sum C_g^2)",
      "dpjax/train.py",
      "  sensitivity = config.clipping.sensitivity if config.noise_multiplier else 0.0\n",
      "  sensitivity = config.clipping.clip_norm if config.noise_multiplier else 0.0\n",
      ("tests/test_noise.py::test_per_layer_noise_std_uses_the_combined_sensitivity",)),
    M("noise_on_every_device", "inside shard_map each device adds its own noise before the psum",
      "dpjax/train.py", _NOISE_SHARE_OLD, _NOISE_ON_EVERY_DEVICE,
      ("tests/test_parallel.py::test_parallel_noise_has_the_one_device_std",)),
    M("noise_shares_overlap", "every device adds the first device's stretch of the noise",
      "dpjax/train.py", _NOISE_SHARE_OLD, _NOISE_SHARES_OVERLAP,
      ("tests/test_parallel.py::test_parallel_noise_has_the_one_device_std",)),
    # ----------------------------------------------------- clipping (dpjax/per_example.py, ghost)
    M("sensitivity_halved", "ClippingConfig.sensitivity reports C/2 for global clipping",
      "dpjax/per_example.py",
      "      return float(self.clip_norm)\n",
      "      return float(self.clip_norm) / 2\n",
      ("tests/test_noise.py::test_noise_std_is_sigma_times_sensitivity_over_expected_batch[l2-1.0]",)),
    M("clip_factor_without_min", "clip factor C/||g|| instead of min(1, C/||g||): small grads scaled up",
      "dpjax/per_example.py",
      "  return jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30))\n",
      "  return clip_norm / jnp.maximum(norms, 1e-30)\n",
      ("tests/test_clipping.py::test_clipped_sum_equals_loop",)),
    M("clipping_missing", "vmap path sums the unclipped per-example gradients",
      "dpjax/per_example.py",
      "    summed = _weighted_sum(grads, jnp.where(keep, factors, 0.0))\n",
      "    summed = _weighted_sum(grads, jnp.where(keep, 1.0, 0.0))\n",
      ("tests/test_clipping.py::test_clipped_sum_equals_loop",)),
    M("padding_mask_ignored", "vmap path lets padded examples (copies of example 0) into the sum",
      "dpjax/per_example.py",
      "  keep = mask & finite\n",
      "  keep = finite\n",
      ("tests/test_clipping.py::test_padded_examples_contribute_nothing",)),
    M("as_float32_noop", "per_example.as_float32 returns the tree unchanged (bf16 norms and sums)",
      "dpjax/per_example.py",
      "  return jax.tree.map(lambda g: g.astype(jnp.float32) if jnp.issubdtype(g.dtype, jnp.floating) else g,\n"
      "                      tree)\n",
      "  return tree\n",
      ("tests/test_train.py::test_bf16_parameters_keep_the_clipping_bound",)),
    M("ghost_dense_norm_missing_input_term", "ghost Dense kernel norm ||g||^2 without the ||a||^2 factor",
      "dpjax/ghost.py",
      "      self.kernel_sq = a_sq * jnp.sum(g[:, 0] ** 2, axis=1)\n",
      "      self.kernel_sq = jnp.sum(g[:, 0] ** 2, axis=1)\n",
      ("tests/test_ghost.py::test_ghost_equals_vmap[mlp-0.3]",)),
    M("ghost_gram_norm_missing_cross_terms", "ghost conv norm (Gram form) keeps only the t = s terms",
      "dpjax/ghost.py",
      "      self.kernel_sq = jnp.sum(gram_a * gram_g, axis=(1, 2))\n",
      "      self.kernel_sq = jnp.sum(jnp.diagonal(gram_a * gram_g, axis1=1, axis2=2), axis=1)\n",
      ("tests/test_ghost.py::test_ghost_equals_vmap[conv-0.3]",)),
    M("ghost_norm_layer_scale_gradient_wrong", "ghost GroupNorm/LayerNorm scale gradient without x_hat",
      "dpjax/ghost.py",
      '      self.exact = {"scale": jnp.sum(xhat * g, axis=1), "bias": jnp.sum(g, axis=1)}\n',
      '      self.exact = {"scale": jnp.sum(g, axis=1), "bias": jnp.sum(g, axis=1)}\n',
      ("tests/test_ghost.py::test_ghost_equals_vmap[conv-0.3]",)),
    M("ghost_bias_norm_missing", "ghost norms leave out the bias (and norm-layer) gradients",
      "dpjax/ghost.py",
      "    out = {name: jnp.sum(v ** 2, axis=1) for name, v in self.exact.items()}\n",
      "    out = {}\n",
      ("tests/test_ghost.py::test_ghost_equals_vmap[mlp-0.3]",)),
    M("ghost_clipping_missing", "ghost path sums with weight 1 instead of the clip factor",
      "dpjax/ghost.py",
      "    weights = jnp.where(keep, per_example.clip_factor(norms, config.clip_norm).astype(f32), f32(0))\n",
      "    weights = jnp.where(keep, f32(1), f32(0))\n",
      ("tests/test_ghost.py::test_ghost_equals_vmap[mlp-0.3]",)),
    M("ghost_padding_mask_ignored", "ghost path lets padded examples into the sum",
      "dpjax/ghost.py",
      "    keep = mask & finite\n"
      "    weights = jnp.where(keep, per_example.clip_factor",
      "    keep = finite\n"
      "    weights = jnp.where(keep, per_example.clip_factor",
      ("tests/test_ghost.py::test_ghost_equals_vmap[mlp-0.3]",)),
    M("ghost_fallback_disabled", "make_plan accepts parameters used outside their layer (partial gradient)",
      "dpjax/ghost.py",
      "  outside = [paths[i] for i, r in enumerate(reaches) if r]\n",
      "  outside = []\n",
      ("tests/test_ghost.py::test_weight_decay_inside_loss_is_detected",)),
    M("ghost_shared_layer_accepted", "make_plan accepts a layer called twice (norm of one call only)",
      "dpjax/ghost.py",
      "  shared = {tuple(v) for v in owners.values() if len(v) > 1}\n",
      "  shared = set()\n",
      ("tests/test_ghost.py::test_unsupported_models_fall_back_to_vmap",)),
    # ------------------------------------------------------------- sampling (dpjax/sampling.py)
    M("poisson_threshold_doubled", "OS Poisson sampling includes each example with probability 2q",
      "dpjax/sampling.py",
      "  threshold = np.uint64((batch_size << 64) // n)\n",
      "  threshold = np.uint64((2 * batch_size << 64) // n)\n",
      ("tests/test_sampling.py::test_each_example_is_included_with_probability_q",)),
    M("seeded_poisson_rate_doubled", "secret-seed Poisson sampling includes each example w.p. 2q",
      "dpjax/sampling.py",
      "        chosen = np.flatnonzero(rng.random(n) < self.batch_size / n)\n",
      "        chosen = np.flatnonzero(rng.random(n) < 2 * self.batch_size / n)\n",
      ("tests/test_sampling.py::test_seeded_poisson_includes_each_example_with_probability_q",)),
    M("poisson_sampler_fixed_seed", "secure Poisson path draws from default_rng(0), not the OS",
      "dpjax/sampling.py",
      "        chosen = np.flatnonzero(_os_poisson_mask(n, self.batch_size))\n",
      "        chosen = np.flatnonzero(np.random.default_rng(0).random(n) < self.batch_size / n)\n",
      ("tests/test_sampling.py::test_default_batches_are_fresh_os_randomness",)),
    M("fixed_size_sampler_fixed_seed", "secure fixed-size path draws from default_rng(0), not the OS",
      "dpjax/sampling.py",
      "        chosen = np.sort(np.asarray(secrets.SystemRandom().sample(range(n), self.batch_size)))\n",
      "        chosen = np.sort(np.random.default_rng(0).choice(n, size=self.batch_size, replace=False))\n",
      ("tests/test_sampling.py::test_default_fixed_size_batches_are_fresh_os_randomness",)),
    M("overflow_probability_ignored", "Poisson padding ignores the sampler's overflow_probability",
      "dpjax/sampling.py",
      "int(stats.binom.isf(overflow_probability, dataset_size, q))",
      "int(stats.binom.isf(OVERFLOW_PROBABILITY, dataset_size, q))",
      ("tests/test_sampling.py::test_overflow_is_loud",)),
    M("overflow_dropped_silently", "an overflowing Poisson batch is truncated instead of refused",
      "dpjax/sampling.py",
      "    if chosen.size > padded:\n",
      "    chosen = chosen[:padded]\n    if chosen.size > padded:\n",
      ("tests/test_sampling.py::test_overflow_is_loud",)),
    M("epochs_to_steps_off_by_one", "steps_for_epochs one step short of ceil(epochs N / B)",
      "dpjax/sampling.py",
      "  return max(1, math.ceil(epochs * dataset_size / expected_batch_size - 1e-9))\n",
      "  return max(1, math.ceil(epochs * dataset_size / expected_batch_size - 1e-9) - 1)\n",
      ("tests/test_sampling.py::test_epochs_to_steps_is_one_rule",)),
    # ------------------------------------------------------------ randomness (dpjax/randomness.py)
    M("randomness_key_ignores_stream", "secret-seed noise key ignores the stream name (arms share noise)",
      "dpjax/randomness.py",
      "    words = _os_words(2) if self._fresh else _stream_words(self.secret_seed, stream, 2)\n",
      "    words = _os_words(2) if self._fresh else _stream_words(self.secret_seed, (), 2)\n",
      ("tests/test_engine.py::test_secret_seed_streams_get_independent_randomness",)),
    M("sampling_seed_ignores_stream", "secret-seed batch seed ignores the stream name (arms share batches)",
      "dpjax/randomness.py",
      '_stream_words(self.secret_seed, ("sampling",) + stream, 4)',
      '_stream_words(self.secret_seed, ("sampling",), 4)',
      ("tests/test_engine.py::test_secret_seed_streams_get_independent_randomness",)),
    M("os_noise_key_fixed", "the default (OS) noise key is a constant",
      "dpjax/randomness.py",
      "    words = _os_words(2) if self._fresh else",
      "    words = np.zeros(2, np.uint32) if self._fresh else",
      ("tests/test_engine.py::test_os_randomness_is_fresh_for_keys_seeds_and_generators",)),
    M("os_numpy_rng_fixed_seed", "the default (OS) NumPy generator is default_rng(0)",
      "dpjax/randomness.py",
      "      return np.random.default_rng(secrets.randbits(128))\n",
      "      return np.random.default_rng(0)\n",
      ("tests/test_engine.py::test_os_randomness_is_fresh_for_keys_seeds_and_generators",)),
    M("report_secure_flag_wrong", "a secret-seed run is described as secure OS randomness",
      "dpjax/randomness.py",
      "    if self.secure:\n      return {\"secure_randomness\": True,",
      "    if True:\n      return {\"secure_randomness\": True,",
      ("tests/test_engine.py::test_privacy_report_marks_a_secret_seed_run_as_not_secure",)),
    # ------------------------------------------------------------ accounting (dpjax/accounting.py)
    M("accounting_q_halved", "the Poisson event carries q/2 (epsilon under-reported)",
      "dpjax/accounting.py",
      "  return dp_event.PoissonSampledDpEvent(phase.sampling_probability, base)\n",
      "  return dp_event.PoissonSampledDpEvent(phase.sampling_probability / 2, base)\n",
      ("tests/test_accounting.py::test_mnist_style_settings_give_dp_accountings_rdp_epsilon",)),
    M("accounting_sigma_doubled", "the Gaussian event carries 2 * noise_multiplier",
      "dpjax/accounting.py",
      "    base = dp_event.GaussianDpEvent(phase.noise_multiplier)\n",
      "    base = dp_event.GaussianDpEvent(phase.noise_multiplier * 2)\n",
      ("tests/test_accounting.py::test_mnist_style_settings_give_dp_accountings_rdp_epsilon",)),
    M("accounting_replace_one_sensitivity_forgotten", "fixed-size sampling event keeps sigma, not sigma/2",
      "dpjax/accounting.py",
      "    base = dp_event.GaussianDpEvent(phase.noise_multiplier / 2)",
      "    base = dp_event.GaussianDpEvent(phase.noise_multiplier)",
      ("tests/test_accounting.py::test_fixed_size_sampling_is_replace_one_with_doubled_sensitivity",)),
    M("ledger_record_noop", "PrivacyLedger.record does not add the steps",
      "dpjax/accounting.py",
      "    self.phases[-1] = self.current.with_steps(self.current.steps + steps)\n",
      "    self.phases[-1] = self.current.with_steps(self.current.steps)\n",
      ("tests/test_accounting.py::test_ledger_composes_phases_and_round_trips",)),
    M("calibration_returns_lo", "calibrate_noise_multiplier returns the too-small sigma (lo)",
      "dpjax/accounting.py",
      "  return hi\n",
      "  return lo\n",
      ("tests/test_accounting.py::test_calibration_round_trips_within_one_percent[rdp-1.0]",)),
    # ------------------------------------------------------------------ engine (dpjax/engine.py)
    M("engine_ledger_not_recording", "the engine's loop never records its steps in the ledger",
      "dpjax/engine.py",
      "      ledger.record(1)\n",
      "      pass\n",
      ("tests/test_engine.py::test_secure_resume_keeps_the_ledger",)),
    M("engine_resume_forgets_ledger", "a resumed run starts a fresh ledger (earlier steps not counted)",
      "dpjax/engine.py",
      "      ledger = accounting.PrivacyLedger.from_dict(meta[\"ledger\"])\n",
      "      ledger = accounting.PrivacyLedger()\n",
      ("tests/test_engine.py::test_secure_resume_keeps_the_ledger",)),
    M("engine_budget_one_step_over", "max_epsilon lets one step past the budget run",
      "dpjax/engine.py",
      "      if budget_steps is not None and t - start_step >= budget_steps:\n",
      "      if budget_steps is not None and t - start_step > budget_steps:\n",
      ("tests/test_engine.py::test_max_epsilon_stops_before_the_step_that_would_exceed_it",)),
    M("engine_loss_in_public_history", "the training-batch loss goes into the released history",
      "dpjax/engine.py",
      "        records.add(public, {\"step\": done, **metrics})\n",
      "        records.add({**public, \"loss\": metrics[\"loss\"]}, {\"step\": done, **metrics})\n",
      ("tests/test_engine.py::test_public_history_holds_no_training_statistic",)),
    M("engine_renamed_statistic_in_public_history", "a training statistic leaks under an innocent name",
      "dpjax/engine.py",
      "        records.add(public, {\"step\": done, **metrics})\n",
      "        records.add({**public, \"fit\": metrics[\"mean_grad_norm\"]}, {\"step\": done, **metrics})\n",
      ("tests/test_engine.py::test_public_history_does_not_change_when_one_record_changes",)),
    # ------------------------------------------------------------- parallel (dpjax/parallel.py)
    M("shard_batch_share_check_removed", "a process may pass the whole global batch (counted per host)",
      "dpjax/parallel.py",
      "  if global_batch_size is not None and local_size != expected:\n",
      "  if False:\n",
      ("tests/test_parallel.py::test_shard_batch_refuses_more_than_this_process_share",)),
    M("process_share_whole_batch", "process_share hands every process the whole global batch",
      "dpjax/parallel.py",
      "  share = global_batch_size // process_count\n",
      "  share = global_batch_size\n",
      ("tests/test_parallel.py::test_process_share_gives_each_process_its_own_slice",)),
    # ------------------------------------------------- per person (dpjax/user_level.py), issue 15
    M("person_sampler_counts_records", "per-person accounting over records instead of persons",
      "dpjax/user_level.py",
      "    return int(self._counts.size)\n",
      "    return int(self._order.size)\n",
      ("tests/test_user_level.py::test_epsilon_equals_dp_accounting_for_n_persons",)),
    M("person_records_not_capped", "a person contributes all their records, not at most k",
      "dpjax/user_level.py",
      "    if count <= k:\n",
      "    if True:\n",
      ("tests/test_user_level.py::test_sampler_draws_each_person_once_and_at_most_k_distinct_records",)),
    M("person_record_mask_ignored", "padded record slots (another person's record) enter a person's term",
      "dpjax/user_level.py",
      "    total = jnp.sum(jnp.where(mask, losses, 0.0))\n",
      "    total = jnp.sum(losses)\n",
      ("tests/test_user_level.py::test_person_clipping_equals_a_loop_over_persons",)),
    M("engine_feeds_whole_batch_per_process", "every process of a multi-host run feeds the whole batch",
      "dpjax/engine.py",
      "      return parallel.shard_batch(_step_inputs(gather, batch, share), batch.mask[share], mesh,\n",
      "      return parallel.shard_batch(_step_inputs(gather, batch, slice(None)), batch.mask, mesh,\n",
      ("tests/test_multihost.py::test_two_processes_equal_one_process",)),
    # ---------------------------------------------------- local DP (experiments/classify/ldp.py)
    M("ldp_scale_halved", "local-DP Laplace noise of scale beta/2 on each pixel",
      "experiments/classify/ldp.py",
      "  noisy = images + scale * jax.random.laplace(key, images.shape, jnp.float32)\n",
      "  noisy = images + 0.5 * scale * jax.random.laplace(key, images.shape, jnp.float32)\n",
      ("tests/classify/test_ldp.py::test_laplace_noise_has_laplace_statistics",)),
    M("ldp_same_noise_for_every_image", "every image gets the noise of one key (identical pattern)",
      "experiments/classify/ldp.py",
      "  example_keys = jax.vmap(lambda index: jax.random.fold_in(key, index))(indices)\n",
      "  example_keys = jax.vmap(lambda index: jax.random.fold_in(key, 0 * index))(indices)\n",
      ("tests/classify/test_ldp.py::test_noise_of_different_images_is_uncorrelated",)),
    M("ldp_epsilon_per_pixel_halved", "per-pixel epsilon reported as range / (2 beta)",
      "experiments/classify/ldp.py",
      "  per_pixel = pixel_range / scale\n",
      "  per_pixel = pixel_range / (2 * scale)\n",
      ("tests/classify/test_ldp.py::test_epsilon_per_pixel_and_per_image",)),
    M("rr_keep_probability_binary", "k-ary randomised response keeps w.p. e^eps/(e^eps+1) (the k=2 rule)",
      "experiments/classify/ldp.py",
      "  return 1.0 / (1.0 + (num_classes - 1) * math.exp(-epsilon))",
      "  return 1.0 / (1.0 + math.exp(-epsilon))",
      ("tests/classify/test_ldp.py::test_randomized_response_keep_rate_and_uniform_flips[1.0-5]",)),
    # --------------------------------------------------------- eQTL (experiments/eqtl/dp_linear.py)
    M("dp_linear_noise_key_reused", "dp_linear's scan uses the same noise key at every step",
      "experiments/eqtl/dp_linear.py",
      "mask, jax.random.fold_in(key, t),\n",
      "mask, jax.random.fold_in(key, 0),\n",
      ("tests/eqtl/test_dp_linear.py::test_noise_of_successive_steps_is_fresh",)),
    M("eqtl_public_standardisation_uses_training_frequencies",
      "the 'public' genotype standardisation estimates allele frequencies on the training samples",
      "dpjax/data/eqtl.py",
      "    freq = np.asarray(public_freq, dtype=np.float64)\n",
      "    freq = allele_frequencies(np.asarray(genotypes)[train])\n",
      ("tests/data/test_eqtl_data.py::test_privacy_free_standardisations[public_freq]",)),
    M("dp_linear_ledger_one_step", "dp_linear records one step in its ledger instead of all",
      "experiments/eqtl/dp_linear.py",
      "  ledger.record(steps)\n",
      "  ledger.record(1)\n",
      ("tests/eqtl/test_dp_linear.py::test_epsilon_is_the_accountants_for_the_run",)),
)

# Breaks `import dpjax`: must be killed, else the tests ran against /work/main, not the copy.
CANARY = M("canary_import_broken", "raise at `import dpjax` (harness self-check)",
           "dpjax/__init__.py", "", 'raise ImportError("privacy_mutants canary")\n',
           ("tests/test_accounting.py::test_zero_steps_and_zero_noise",))

# ----------------------------------------------------------------------------------- machinery


class OutOfSync(Exception):
  pass


def check_snippet(mutation: Mutation, root: pathlib.Path = REPO) -> str:
  """The file's text; raises OutOfSync unless `old` occurs exactly once."""
  path = root / mutation.file
  if not path.is_file():
    raise OutOfSync(f"{mutation.name}: {mutation.file} does not exist")
  text = path.read_text()
  count = text.count(mutation.old)
  if count != 1:
    raise OutOfSync(f"{mutation.name}: the `old` snippet occurs {count} times in {mutation.file} "
                    f"(must be exactly once):\n{mutation.old}")
  if mutation.old == mutation.new:
    raise OutOfSync(f"{mutation.name}: `new` equals `old`")
  return text


def scratch_copy() -> pathlib.Path:
  root = pathlib.Path(tempfile.mkdtemp(prefix="privacy_mutant_"))
  copy = root / "repo"
  shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
  return copy


def env_for(copy: pathlib.Path) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(copy)] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  env["COLUMNS"] = "200"  # room for the failure message in pytest's summary line
  return env


@dataclasses.dataclass
class Outcome:
  status: str  # KILLED, SURVIVED, ERROR
  killer: str = ""
  detail: str = ""
  seconds: float = 0.0


# "FAILED <node id> - <message>"; a parametrised id may hold spaces ("[model0-more than once]").
_FAIL_LINE = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$")


def run_pytest(copy: pathlib.Path, tests: tuple[str, ...], stop_first: bool = True,
               timeout: int = TIMEOUT_S) -> tuple[int, str, list[str]]:
  args = PYTEST if stop_first else tuple(a for a in PYTEST if a != "-x")
  cmd = [sys.executable, "-m", "pytest", *args, *tests]
  # Its own process group, so that a timeout also ends the subprocesses a test started.
  proc = subprocess.Popen(cmd, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    output, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    return -1, output, []
  failed = [m.group(2) for m in map(_FAIL_LINE.match, output.splitlines()) if m]
  return proc.returncode, output, failed


def run_mutation(mutation: Mutation, timeout: int = TIMEOUT_S) -> Outcome:
  start = time.time()
  copy = scratch_copy()
  try:
    path = copy / mutation.file
    if mutation is CANARY:
      path.write_text(mutation.new + path.read_text())
    else:
      text = check_snippet(mutation, copy)
      path.write_text(text.replace(mutation.old, mutation.new, 1))
    rc, output, failed = run_pytest(copy, mutation.tests, timeout=timeout)
  finally:
    shutil.rmtree(copy.parent, ignore_errors=True)
  seconds = time.time() - start
  lines = output.strip().splitlines()
  # The assertion that failed (pytest's "E   " lines) and the summary, without captured logs.
  tail = "\n".join([l for l in lines if l.startswith("E ")][:8] + lines[-3:])
  if rc == -1:
    return Outcome("ERROR", detail=f"timed out after {timeout}s", seconds=seconds)
  if rc == 0:
    return Outcome("SURVIVED", seconds=seconds)
  if rc in (1, 2) and failed:  # 2: interrupted by a collection error (e.g. the import fails)
    return Outcome("KILLED", killer=failed[0], detail=tail, seconds=seconds)
  conftest = re.search(r"ImportError while loading conftest '(\S+)'", output)
  if conftest:  # the mutant breaks `import dpjax` itself
    where = os.path.relpath(conftest.group(1), copy)
    return Outcome("KILLED", killer=f"{where} (import error)", detail=tail, seconds=seconds)
  return Outcome("ERROR", detail=f"pytest exit status {rc} (node id not found? no test "
                                 f"collected?)\n{tail}", seconds=seconds)


def check_copy_imports() -> None:
  """`import dpjax, experiments` in a scratch copy resolves to the copy (not /work/main)."""
  copy = scratch_copy()
  try:
    code = "import dpjax, experiments; print(dpjax.__file__); print(experiments.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy),
                          capture_output=True, text=True, timeout=300, check=False)
    files = proc.stdout.split()
    if proc.returncode != 0 or len(files) != 2 or not all(
        pathlib.Path(f).resolve().is_relative_to(copy.resolve()) for f in files):
      raise SystemExit(f"self-check failed: the scratch copy's packages are not the ones imported "
                       f"({files or proc.stderr[-2000:]}); mutants would not be tested.")
  finally:
    shutil.rmtree(copy.parent, ignore_errors=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", action="append", default=[], metavar="NAME",
                      help="run only this mutation (repeatable)")
  parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
  parser.add_argument("--jobs", type=int, default=2, help="mutations run in parallel (default 2)")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip the run of the selected tests on the unmutated tree")
  parser.add_argument("--no-canary", action="store_true",
                      help="skip the self-check that tests import the mutated copy")
  parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per pytest run")
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="also print the tail of pytest's output of each mutant")
  args = parser.parse_args(argv)

  names = [m.name for m in CATALOGUE]
  duplicates = {n for n in names if names.count(n) > 1}
  if duplicates:
    print(f"duplicate mutation names: {sorted(duplicates)}", file=sys.stderr)
    return 2
  unknown = sorted(set(args.only) - set(names))
  if unknown:
    print(f"unknown mutation(s) {unknown}; see --list", file=sys.stderr)
    return 2
  selected = [m for m in CATALOGUE if not args.only or m.name in args.only]

  out_of_sync = []
  for m in selected:
    try:
      check_snippet(m)
    except OutOfSync as e:
      out_of_sync.append(str(e))
  if args.list:
    for m in CATALOGUE:
      print(f"{m.name:45s} {m.file:32s} {m.description}\n{'':45s} tests: {' '.join(m.tests)}")
    print(f"{len(CATALOGUE)} mutations")
  if out_of_sync:
    for message in out_of_sync:
      print(f"OUT OF SYNC {message}", file=sys.stderr)
    print(f"{len(out_of_sync)} mutation(s) out of sync with the code: fix their `old` snippets.",
          file=sys.stderr)
    return 2
  if args.list:
    return 0

  start = time.time()
  if not args.no_canary:
    check_copy_imports()
    canary = run_mutation(CANARY, args.timeout)
    if canary.status != "KILLED" or "canary" not in canary.detail:
      print(f"self-check failed: the import-breaking canary was {canary.status}: the tests do not "
            f"run against the mutated copy.\n{canary.detail}", file=sys.stderr)
      return 2
    print(f"self-check: tests import the scratch copy (canary killed by {canary.killer})",
          file=sys.stderr, flush=True)

  lock = threading.Lock()
  results: dict[str, Outcome] = {}
  baseline_failed: set[str] = set()

  def baseline() -> None:
    began = time.time()
    tests = tuple(dict.fromkeys(t for m in selected for t in m.tests))
    copy = scratch_copy()
    try:
      rc, output, failed = run_pytest(copy, tests, stop_first=False, timeout=2 * args.timeout)
    finally:
      shutil.rmtree(copy.parent, ignore_errors=True)
    with lock:
      baseline_failed.update(failed)
      if rc not in (0, 1) or (rc == 1 and not failed):
        baseline_failed.add(f"<baseline pytest exit status {rc}>")
      print(f"baseline: {len(tests)} test ids on the unmutated tree: "
            f"{'all pass' if rc == 0 else 'FAILED ' + ' '.join(sorted(baseline_failed))} "
            f"({time.time() - began:.0f}s)",
            file=sys.stderr, flush=True)
      if rc not in (0, 1):
        print("\n".join(output.strip().splitlines()[-15:]), file=sys.stderr, flush=True)

  def one(m: Mutation) -> None:
    outcome = run_mutation(m, args.timeout)
    with lock:
      results[m.name] = outcome
      print(f"[{len(results)}/{len(selected)}] {outcome.status} {m.name} "
            f"({outcome.seconds:.0f}s){' by ' + outcome.killer if outcome.killer else ''}",
            file=sys.stderr, flush=True)

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    futures = [] if args.no_baseline else [pool.submit(baseline)]
    # Longest first (the 4-device subprocess test, the conv ghost case, the 200k-coordinate noise
    # statistics), so that the tail of the run stays short.
    def cost(m: Mutation) -> int:
      return max([i for i, slow in enumerate(SLOW_TESTS, 1) if any(slow in t for t in m.tests)],
                 default=0)
    futures += [pool.submit(one, m) for m in sorted(selected, key=cost, reverse=True)]
    for f in futures:
      f.result()

  bad = 0
  for m in selected:
    o = results[m.name]
    if o.status == "KILLED" and (o.killer in baseline_failed
                                 or any(k.startswith("<baseline") for k in baseline_failed)):
      print(f"UNRELIABLE {m.name}: killed by {o.killer}, which also fails on the unmutated tree")
      bad += 1
    elif o.status == "KILLED":
      print(f"KILLED {m.name} by {o.killer}")
    elif o.status == "SURVIVED":
      print(f"SURVIVED {m.name}")
      bad += 1
    else:
      print(f"ERROR {m.name}: {o.detail}")
      bad += 1
    if args.verbose and o.detail and o.status != "ERROR":
      print("    " + o.detail.replace("\n", "\n    "))
  counts = {s: sum(r.status == s for r in results.values()) for s in ("KILLED", "SURVIVED", "ERROR")}
  print(f"summary: {len(selected)} mutations, {counts['KILLED']} killed, {counts['SURVIVED']} "
        f"survived, {counts['ERROR']} errors"
        + ("" if args.no_baseline else f", baseline {'clean' if not baseline_failed else 'FAILED'}")
        + f"; wall time {time.time() - start:.0f}s ({max(1, args.jobs)} jobs)")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
