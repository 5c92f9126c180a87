"""Tests for dpjax.data.eqtl: simulation, PLINK and expression loading, joins, splits."""

import gzip
import logging
import pathlib
import shutil

from bed_reader import open_bed, to_bed
import numpy as np
import pandas as pd
import pytest
from sklearn import linear_model

from dpjax.data import eqtl

HAPMAP = "genotypes/hapmap_yri/plinkhapmap"
ONEK1K = "genotypes/onek1k_chr22_n94/chr22.n94"
ONEK1K_TMM = "genotypes/onek1k_chr22_n94/n94_CD14_positive_monocyte.tmm.bed.gz"
GENE = "ENSG00000100031"  # GGT1 on chr22, expressed in CD14 monocytes


def _write_plink(prefix: pathlib.Path, genotypes: np.ndarray, sample_ids, *, bim=True,
                 gzipped=False) -> pathlib.Path:
  """A tiny PLINK set written by bed_reader; optionally without .bim or gzipped."""
  n, p = genotypes.shape
  to_bed(f"{prefix}.bed", genotypes, properties={
      "iid": list(sample_ids), "chromosome": ["22"] * p,
      "bp_position": [1000 * (j + 1) for j in range(p)], "sid": [f"rs{j}" for j in range(p)]})
  if not bim:
    pathlib.Path(f"{prefix}.bim").unlink()
  if gzipped:
    for ext in ("bed", "bim", "fam"):
      plain = pathlib.Path(f"{prefix}.{ext}")
      if plain.exists():
        with open(plain, "rb") as src, gzip.open(f"{plain}.gz", "wb") as dst:
          shutil.copyfileobj(src, dst)
        plain.unlink()
  return prefix


def _write_expression(path: pathlib.Path, values: dict[str, list[float]], genes=("GENE_A",)):
  """A BED-like genes x samples table like the OneK1K files."""
  rows = [{"#Chr": 22, "start": 999 + 10 * i, "end": 1000 + 10 * i, "phenotype_id": gene,
           **{sample: v[i] for sample, v in values.items()}} for i, gene in enumerate(genes)]
  pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
  return path


# --- simulation -------------------------------------------------------------


def test_simulated_genotypes_are_0_1_2_with_means_near_twice_maf():
  genotypes, maf = eqtl.simulate_genotypes(0, n=20000, p=20, maf_range=(0.05, 0.5))
  assert genotypes.dtype == np.int8 and genotypes.shape == (20000, 20)
  assert set(np.unique(genotypes)) <= {0, 1, 2}
  assert np.all((maf >= 0.05) & (maf <= 0.5))
  standard_error = np.sqrt(2 * maf * (1 - maf) / 20000)
  assert np.all(np.abs(genotypes.mean(axis=0) - 2 * maf) < 5 * standard_error)


def test_simulation_is_reproducible_from_the_seed():
  first, _ = eqtl.simulate_genotypes(3, 50, 10)
  again, _ = eqtl.simulate_genotypes(np.random.default_rng(3), 50, 10)
  other, _ = eqtl.simulate_genotypes(4, 50, 10)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  with pytest.raises(ValueError, match="maf_range"):
    eqtl.simulate_genotypes(0, 5, 5, maf_range=(0.1, 0.7))


def test_standardisation_centres_scales_and_zeroes_monomorphic_snps(caplog):
  genotypes = np.array([[0, 2, 1], [1, 2, 1], [2, 2, 0], [1, 2, 2]], dtype=np.int8)
  freq = eqtl.allele_frequencies(genotypes)
  np.testing.assert_allclose(freq, [0.5, 1.0, 0.5])
  with caplog.at_level(logging.INFO, logger="absl"):
    standardised = eqtl.standardize_genotypes(genotypes, freq)
  assert "1 of 3 SNPs are monomorphic" in caplog.text
  # By hand: (g - 2 * 0.5) / sqrt(2 * 0.5 * 0.5).
  np.testing.assert_allclose(standardised[:, 0], np.array([-1, 0, 1, 0]) / np.sqrt(0.5), rtol=1e-6)
  np.testing.assert_array_equal(standardised[:, 1], 0.0)


@pytest.mark.parametrize("h2", [0.2, 0.8])
def test_simulated_expression_has_the_target_heritability(h2):
  genotypes, maf = eqtl.simulate_genotypes(1, n=20000, p=30)
  x = eqtl.standardize_genotypes(genotypes, maf)
  y, beta = eqtl.simulate_expression(2, x, h2=h2, num_causal=5)
  assert np.count_nonzero(beta) == 5
  assert np.var(x @ beta) / np.var(y) == pytest.approx(h2, abs=0.02)


def test_zero_heritability_gives_pure_noise_and_bad_counts_are_named():
  genotypes, maf = eqtl.simulate_genotypes(1, n=100, p=5)
  x = eqtl.standardize_genotypes(genotypes, maf)
  y, beta = eqtl.simulate_expression(0, x, h2=0.0, num_causal=2)
  np.testing.assert_array_equal(beta, 0.0)
  with pytest.raises(ValueError, match="num_causal=6"):
    eqtl.simulate_expression(0, x, h2=0.5, num_causal=6)


def test_make_eqtl_data_simulated_is_reproducible_and_held_out_r2_near_h2():
  data = eqtl.make_eqtl_data("simulated", n=5000, p=20, h2=0.6, num_causal=5, seed=11)
  again = eqtl.make_eqtl_data("simulated", n=5000, p=20, h2=0.6, num_causal=5, seed=11)
  other = eqtl.make_eqtl_data("simulated", n=5000, p=20, h2=0.6, num_causal=5, seed=12)
  for name in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(data, name), getattr(again, name))
  assert not np.array_equal(data.y_train, other.y_train)
  assert data.x_train.shape == (4000, 20) and data.x_test.shape == (1000, 20)
  assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.float32
  model = linear_model.LinearRegression().fit(data.x_train, data.y_train)
  assert model.score(data.x_test, data.y_test) == pytest.approx(0.6, abs=0.05)
  assert "h2=0.6" in data.description and "public_freq" in data.description
  assert data.metadata["standardization"] == "public_freq" and data.not_covered == ()


def _with_one_training_row_changed(genotypes, train):
  """A copy with one training sample's genotype row replaced (a neighbouring data set)."""
  changed = np.array(genotypes, copy=True)
  changed[train[0]] = 2 - changed[train[0]]  # flip every call of that sample: 0 <-> 2
  assert not np.array_equal(changed, genotypes)
  return changed


@pytest.mark.parametrize("standardization", ["public", "public_freq", "centered"])
def test_privacy_free_standardisations(standardization):
  """Public statistics are UNCHANGED when one training record changes."""
  data = eqtl.make_eqtl_data("simulated", n=200, p=10, seed=0, standardization=standardization)
  assert data.not_covered == () and np.all(np.isfinite(data.x_train))
  _, maf = eqtl.simulate_genotypes(
      np.random.default_rng(np.random.SeedSequence(0).spawn(4)[0]), 200, 10)
  center, scale = data.metadata["genotype_center"], data.metadata["genotype_scale"]
  if standardization == "centered":
    assert set(np.unique(data.x_train)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(center, 1.0)
    np.testing.assert_array_equal(scale, 1.0)
  else:  # "public" resolves to the simulation's MAFs here
    assert data.metadata["standardization"] == "public_freq"
    np.testing.assert_allclose(center, 2 * maf)
    np.testing.assert_allclose(scale, 1 / np.sqrt(2 * maf * (1 - maf)))

  # The neighbouring-data-set check: change one training genotype row; centre and scale
  # must be identical, and so must every other sample's features.
  genotypes, _ = eqtl.simulate_genotypes(3, 100, 8)
  public_freq = np.linspace(0.1, 0.5, 8)
  train = np.arange(20, 100)
  changed = _with_one_training_row_changed(genotypes, train)
  before = eqtl.genotype_standardization(genotypes, train, standardization, public_freq)
  after = eqtl.genotype_standardization(changed, train, standardization, public_freq)
  for statistic_before, statistic_after in zip(before, after):
    np.testing.assert_array_equal(statistic_before, statistic_after)
  others = np.setdiff1d(np.arange(100), train[:1])
  np.testing.assert_array_equal(
      eqtl._features(genotypes, train, standardization, public_freq)[others],
      eqtl._features(changed, train, standardization, public_freq)[others])


def test_train_freq_changes_with_one_record_and_is_flagged_not_covered():
  """The same check fails for the data-dependent option (so the check above has teeth)."""
  genotypes, _ = eqtl.simulate_genotypes(3, 100, 8)
  train = np.arange(20, 100)
  changed = _with_one_training_row_changed(genotypes, train)
  center, scale = eqtl.genotype_standardization(genotypes, train, "train_freq", None)
  center2, scale2 = eqtl.genotype_standardization(changed, train, "train_freq", None)
  assert not np.array_equal(center, center2) and not np.array_equal(scale, scale2)
  data = eqtl.make_eqtl_data("simulated", n=200, p=10, seed=0, standardization="train_freq")
  assert data.not_covered == (eqtl.NOT_COVERED_TRAIN_FREQ,)
  assert "NOT covered" in data.description
  with pytest.raises(ValueError, match="standardization='nope'"):
    eqtl.make_eqtl_data("simulated", n=50, p=5, standardization="nope")


def _split_position(data, sample_id):
  """Row of `sample_id` in concatenate([x_train, x_test]) (the split depends on n and seed)."""
  ids = list(data.metadata["sample_ids"])
  split_rng = np.random.default_rng(np.random.SeedSequence(data.metadata["seed"]).spawn(4)[3])
  train_rows, test_rows = eqtl.split_samples(split_rng, len(ids),
                                             data.metadata["n_test"] / len(ids))
  assert train_rows.size == data.x_train.shape[0]
  return (list(train_rows) + list(test_rows)).index(ids.index(sample_id))


def _stacked(data):
  return (np.concatenate([data.x_train, data.x_test]),
          np.concatenate([data.y_train, data.y_test]))


def test_real_genotypes_default_to_privacy_free_preprocessing(tmp_path):
  """PLINK genotypes + expression: by default, changing one training sample's genotypes
  (including where another sample has a missing call) changes no other sample's row."""
  rng = np.random.default_rng(4)
  n, p = 30, 5
  ids = [f"s{i}" for i in range(n)]
  genotypes = rng.integers(0, 3, size=(n, p)).astype(np.float32)
  genotypes[7, 2] = np.nan  # one missing call, imputed
  expression = _write_expression(tmp_path / "expr.bed",
                                 {s: [float(v)] for s, v in zip(ids, rng.normal(size=n))})
  kwargs = dict(p=p, expression_path=expression, gene_id="GENE_A", test_fraction=0.2, seed=1)
  first = eqtl.make_eqtl_data(
      "plink_expression", plink_prefix=_write_plink(tmp_path / "a", genotypes, ids), **kwargs)
  n_train = first.x_train.shape[0]
  changed_sample = next(s for s in ids if s != "s7" and _split_position(first, s) < n_train)
  changed = genotypes.copy()
  changed[ids.index(changed_sample)] = 2 - genotypes[ids.index(changed_sample)]
  changed[ids.index(changed_sample), 2] = 2.0 if genotypes[ids.index(changed_sample), 2] != 2 \
      else 0.0  # a different call in the SNP with the gap
  second = eqtl.make_eqtl_data(
      "plink_expression", plink_prefix=_write_plink(tmp_path / "b", changed, ids), **kwargs)

  assert first.metadata["standardization"] == "centered"  # no public frequencies: "public"
  for name in ("genotype_center", "genotype_scale"):
    np.testing.assert_array_equal(first.metadata[name], second.metadata[name])
  (x1, y1), (x2, y2) = _stacked(first), _stacked(second)
  unchanged = np.setdiff1d(np.arange(n), [_split_position(first, changed_sample)])
  np.testing.assert_array_equal(x1[unchanged], x2[unchanged])
  np.testing.assert_array_equal(y1, y2)  # expression used as stored: no target moves
  assert x1[_split_position(first, "s7"), 2] == 0.0  # imputed with the public dosage 1
  assert first.not_covered == (eqtl.NOT_COVERED_PUBLISHER_NORMALISATION,)

  # The data-dependent options move other samples' rows, and are flagged as not covered.
  kwargs.update(standardization="train_freq", missing="impute_mean",
                expression_standardization="train")
  first = eqtl.make_eqtl_data("plink_expression", plink_prefix=tmp_path / "a", **kwargs)
  second = eqtl.make_eqtl_data("plink_expression", plink_prefix=tmp_path / "b", **kwargs)
  (x1, _), (x2, _) = _stacked(first), _stacked(second)
  assert not np.array_equal(x1[unchanged], x2[unchanged])
  assert not np.array_equal(first.metadata["genotype_center"],
                            second.metadata["genotype_center"])
  assert set(first.not_covered) == {
      eqtl.NOT_COVERED_TRAIN_FREQ, eqtl.NOT_COVERED_MEAN_IMPUTATION,
      eqtl.NOT_COVERED_EXPRESSION_TRAIN, eqtl.NOT_COVERED_PUBLISHER_NORMALISATION}
  assert first.metadata["not_covered"] == list(first.not_covered)


def test_public_allele_frequencies_for_real_genotypes(tmp_path):
  genotypes = np.random.default_rng(5).integers(0, 3, size=(20, 4)).astype(np.float32)
  genotypes[3, 1] = np.nan
  prefix = _write_plink(tmp_path / "g", genotypes, [f"s{i}" for i in range(20)])
  reference = np.array([0.1, 0.2, 0.3, 0.4])
  data = eqtl.make_eqtl_data("plink_simulated", p=4, num_causal=2, plink_prefix=prefix,
                             public_allele_freq=reference)
  assert data.metadata["standardization"] == "public_freq"
  np.testing.assert_allclose(data.metadata["genotype_center"], 2 * reference)
  assert data.not_covered == (eqtl.NOT_COVERED_SEMI_SYNTHETIC,)
  x = np.concatenate([data.x_train, data.x_test])
  assert np.any(np.abs(x[:, 1]) < 1e-6)  # the gap filled with 2f, i.e. standardised to 0
  with pytest.raises(ValueError, match="public_allele_freq"):
    eqtl.make_eqtl_data("plink_simulated", p=4, num_causal=2, plink_prefix=prefix,
                        public_allele_freq=reference[:3])
  with pytest.raises(ValueError, match="public_allele_freq"):
    eqtl.make_eqtl_data("simulated", n=20, p=4, public_allele_freq=reference)


def test_split_is_a_partition_and_bad_fractions_are_refused():
  train, test = eqtl.split_samples(0, 10, 0.3)
  assert test.size == 3 and np.array_equal(np.sort(np.concatenate([train, test])), np.arange(10))
  with pytest.raises(ValueError, match="test_fraction"):
    eqtl.split_samples(0, 3, 0.9)


# --- PLINK files written here ----------------------------------------------


@pytest.mark.parametrize("bim,gzipped", [(True, False), (False, False), (True, True),
                                         (False, True)])
def test_load_plink_reads_plain_gzipped_and_bim_less_files(tmp_path, bim, gzipped):
  genotypes = np.random.default_rng(0).integers(0, 3, size=(7, 6)).astype(np.float32)
  ids = [f"s{i}" for i in range(7)]
  prefix = _write_plink(tmp_path / "tiny", genotypes, ids, bim=bim, gzipped=gzipped)
  loaded = eqtl.load_plink(prefix, snp_start=1, num_snps=4)
  np.testing.assert_array_equal(loaded.genotypes, genotypes[:, 1:5])
  np.testing.assert_array_equal(loaded.sample_ids, ids)
  if bim:
    np.testing.assert_array_equal(loaded.snp_ids, ["rs1", "rs2", "rs3", "rs4"])
    np.testing.assert_array_equal(loaded.positions, [2000, 3000, 4000, 5000])
  else:
    np.testing.assert_array_equal(loaded.snp_ids, ["snp1", "snp2", "snp3", "snp4"])
    assert loaded.positions is None


def test_missing_calls_are_imputed_with_a_log_line_or_refused(tmp_path, caplog):
  genotypes = np.array([[0, 2], [np.nan, 1], [2, np.nan], [1, 1]], dtype=np.float32)
  prefix = _write_plink(tmp_path / "gaps", genotypes, ["a", "b", "c", "d"])
  with caplog.at_level(logging.INFO, logger="absl"):
    public = eqtl.load_plink(prefix)  # default: a public dosage, no statistic of the samples
    per_snp = eqtl.load_plink(prefix, impute_value=np.array([0.5, 1.5]))
    loaded = eqtl.load_plink(prefix, missing="impute_mean")
  assert "imputed 2 missing genotype calls in 2 SNPs with a public dosage" in caplog.text
  np.testing.assert_array_equal(public.genotypes[[1, 2], [0, 1]], [1.0, 1.0])
  np.testing.assert_array_equal(per_snp.genotypes[[1, 2], [0, 1]], [0.5, 1.5])
  assert "mean-imputed 2 missing genotype calls in 2 SNPs" in caplog.text
  assert "NOT covered" in caplog.text
  np.testing.assert_allclose(loaded.genotypes[1, 0], 1.0)  # mean of 0, 2, 1
  np.testing.assert_allclose(loaded.genotypes[2, 1], 4 / 3)  # mean of 2, 1, 1
  with pytest.raises(ValueError, match=r"gaps\.bed.*2 missing genotype calls"):
    eqtl.load_plink(prefix, missing="error")
  with pytest.raises(ValueError, match="impute_value"):
    eqtl.load_plink(prefix, impute_value=3.0)


def test_fam_that_does_not_match_the_bed_is_named(tmp_path):
  # 4 samples fit one byte per SNP, 5 need two: the .bed size gives the mismatch away.
  prefix = _write_plink(tmp_path / "odd", np.zeros((4, 3), np.float32), list("abcd"), bim=False)
  with open(f"{prefix}.fam", "a") as f:
    f.write("0 extra 0 0 0 -9\n")
  with pytest.raises(ValueError, match=r"odd\.bed.*\.fam sample count"):
    eqtl.load_plink(prefix)
  with_bim = _write_plink(tmp_path / "bim", np.zeros((4, 3), np.float32), list("abcd"))
  with open(f"{with_bim}.bim", "a") as f:
    f.write("22\trs9\t0\t9000\tA\tG\n")
  with pytest.raises(ValueError, match=r"bim\.bim lists 4 SNPs but .*bim\.bed holds 3"):
    eqtl.load_plink(with_bim)
  with pytest.raises(FileNotFoundError, match="nothing"):
    eqtl.load_plink(tmp_path / "nothing")


def test_window_keeps_snps_nearest_the_centre(tmp_path):
  prefix = _write_plink(tmp_path / "win", np.zeros((4, 10), np.float32), list("abcd"))
  loaded = eqtl.load_plink(prefix, window=("chr22", 5200, 2500), num_snps=3)
  np.testing.assert_array_equal(loaded.positions, [4000, 5000, 6000])
  genes = tmp_path / "genes.tsv"
  pd.DataFrame({"phenotype_id": ["G"], "chr": [22], "start": [8000], "end": [8000]}).to_csv(
      genes, sep="\t", index=False)
  full = eqtl.load_plink(prefix)
  indices = eqtl.cis_window_snps("G", genes, full.chromosomes, full.positions, window_bp=1500)
  np.testing.assert_array_equal(full.positions[indices], [7000, 8000, 9000])
  with pytest.raises(ValueError, match="positions are unknown"):
    eqtl.cis_window_snps("G", genes, None, None)


# --- expression and the join -------------------------------------------------


def test_expression_join_uses_the_intersection_with_a_log_line(tmp_path, caplog):
  genotypes = np.random.default_rng(1).integers(0, 3, size=(6, 4)).astype(np.float32)
  prefix = _write_plink(tmp_path / "geno", genotypes, ["s0", "s1", "s2", "s3", "s4", "s5"])
  expression = _write_expression(
      tmp_path / "expr.bed",
      {s: [float(i)] for i, s in enumerate(["s5", "s1", "s2", "s3", "s0", "x9"])})
  with caplog.at_level(logging.INFO, logger="absl"):
    data = eqtl.make_eqtl_data("plink_expression", p=4, plink_prefix=prefix,
                               expression_path=expression, gene_id="GENE_A", test_fraction=0.4)
  assert "matched 5 samples" in caplog.text
  np.testing.assert_array_equal(np.sort(data.metadata["sample_ids"]),
                                ["s0", "s1", "s2", "s3", "s5"])
  assert data.x_train.shape[0] + data.x_test.shape[0] == 5
  # By default expression is used as stored (sample s -> its value in the file).
  stored = {"s5": 0.0, "s1": 1.0, "s2": 2.0, "s3": 3.0, "s0": 4.0}
  assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == sorted(stored.values())
  standardised = eqtl.make_eqtl_data(
      "plink_expression", p=4, plink_prefix=prefix, expression_path=expression,
      gene_id="GENE_A", test_fraction=0.4, expression_standardization="train")
  assert np.mean(standardised.y_train) == pytest.approx(0.0, abs=1e-6)
  assert eqtl.NOT_COVERED_EXPRESSION_TRAIN in standardised.not_covered


def test_mismatched_sample_ids_name_both_files(tmp_path):
  prefix = _write_plink(tmp_path / "geno", np.zeros((3, 2), np.float32), ["a1", "a2", "a3"])
  expression = _write_expression(tmp_path / "expr.bed", {"b1": [1.0], "b2": [2.0]})
  with pytest.raises(ValueError) as error:
    eqtl.make_eqtl_data("plink_expression", p=2, plink_prefix=prefix,
                        expression_path=expression, gene_id="GENE_A")
  message = str(error.value)
  assert "geno.bed" in message and "expr.bed" in message
  assert "a1" in message and "b1" in message


def test_expression_normalisations_by_hand(tmp_path):
  path = _write_expression(tmp_path / "counts.bed", {"s1": [10, 90], "s2": [0, 50]},
                           genes=("GENE_A", "GENE_B"))
  raw = eqtl.load_expression_bed(path, "GENE_A")
  np.testing.assert_array_equal(raw.to_numpy(), [10, 0])
  cpm = eqtl.load_expression_bed(path, "GENE_A", normalization="log1p_cpm")
  np.testing.assert_allclose(cpm.to_numpy(), [np.log1p(1e6 * 10 / 100), 0.0])
  with pytest.raises(ValueError, match="GENE_Z.*counts.bed"):
    eqtl.load_expression_bed(path, "GENE_Z")


# --- real data (skipped when ../shared/data is absent) -------------------------


def test_real_hapmap_gzipped_with_bim(shared_data_dir):
  loaded = eqtl.load_plink(shared_data_dir / HAPMAP, num_snps=200)
  assert loaded.genotypes.shape == (60, 200)
  assert loaded.sample_ids[0] == "NA19152" and loaded.snp_ids[0] == "9"
  assert np.all(np.diff(loaded.positions[loaded.chromosomes == "1"]) > 0)
  assert np.all(np.isfinite(loaded.genotypes))
  with pytest.raises(ValueError, match="missing genotype calls"):
    eqtl.load_plink(shared_data_dir / HAPMAP, num_snps=200, missing="error")


def test_real_hapmap_values_match_a_direct_bed_reader_read(shared_data_dir, tmp_path):
  for ext in ("bed", "bim", "fam"):
    with gzip.open(shared_data_dir / f"{HAPMAP}.{ext}.gz") as src, \
        open(tmp_path / f"h.{ext}", "wb") as dst:
      shutil.copyfileobj(src, dst)
  with open_bed(tmp_path / "h.bed") as bed:
    direct = bed.read(index=np.s_[:, 100:150], dtype="float32")
  loaded = eqtl.load_plink(shared_data_dir / HAPMAP, snp_start=100, num_snps=50)
  present = ~np.isnan(direct)
  np.testing.assert_array_equal(loaded.genotypes[present], direct[present])


def test_real_onek1k_without_bim(shared_data_dir):
  loaded = eqtl.load_plink(shared_data_dir / ONEK1K, snp_start=140_000, num_snps=30)
  assert loaded.genotypes.shape == (94, 30)
  assert set(np.unique(loaded.genotypes)) <= {0.0, 1.0, 2.0}
  assert loaded.snp_ids[0] == "snp140000" and loaded.positions is None
  with pytest.raises(ValueError, match="no .bim"):
    eqtl.load_plink(shared_data_dir / ONEK1K, window=("22", 20_000_000, 10_000))


def test_real_expression_join_for_one_gene(shared_data_dir):
  expression = eqtl.load_expression_bed(shared_data_dir / ONEK1K_TMM, GENE)
  table = pd.read_csv(shared_data_dir / ONEK1K_TMM, sep="\t")
  row = table[table["phenotype_id"] == GENE].iloc[0, 4:]
  np.testing.assert_allclose(expression[row.index].to_numpy(), row.to_numpy(dtype=float))
  data = eqtl.make_eqtl_data("plink_expression", p=25, gene_id=GENE, seed=0,
                             data_dir=str(shared_data_dir))
  assert data.x_train.shape == (75, 25) and data.x_test.shape == (19, 25)
  assert set(np.unique(data.x_train)) <= {-1.0, 0.0, 1.0}  # "public" -> centered
  assert data.not_covered == (eqtl.NOT_COVERED_PUBLISHER_NORMALISATION,)
  standardised = eqtl.make_eqtl_data("plink_expression", p=25, gene_id=GENE, seed=0,
                                     data_dir=str(shared_data_dir),
                                     expression_standardization="train")
  assert np.std(standardised.y_train) == pytest.approx(1.0, abs=1e-5)
  # The genotype rows and the expression values belong to the same donors.
  fam_ids = pd.read_csv(shared_data_dir / f"{ONEK1K}.fam", sep=r"\s+", header=None)[1].astype(str)
  assert set(data.metadata["sample_ids"]) == set(fam_ids) == set(expression.index)


def test_real_semi_synthetic_hapmap(shared_data_dir):
  data = eqtl.make_eqtl_data("plink_simulated", p=40, h2=0.5, num_causal=4, seed=2,
                             data_dir=str(shared_data_dir))
  assert data.x_train.shape == (48, 40) and data.x_test.shape == (12, 40)
  assert np.count_nonzero(data.metadata["true_beta"]) == 4
  with pytest.raises(ValueError, match="public_freq"):
    eqtl.make_eqtl_data("plink_simulated", p=10, standardization="public_freq",
                        data_dir=str(shared_data_dir))
