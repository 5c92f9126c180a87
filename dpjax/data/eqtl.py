"""eQTL data: genotypes (simulated or PLINK), gene expression, and a train/test split.

Three sources feed the regression of one gene's expression on P SNP genotypes:

* "simulated": genotypes drawn SNP by SNP from Binomial(2, MAF), expression simulated
  with a chosen heritability h2 and number of causal SNPs (the study's set-up).
* "plink_simulated": real genotypes from a PLINK file with simulated expression of known
  h2 (semi-synthetic: the truth is known, the linkage between SNPs is real).
* "plink_expression": real genotypes joined by sample id to a real expression matrix.

Genotype standardisation (as in GCTA/LDSC): with f_j the frequency of the counted allele
of SNP j, x_ij = (g_ij - 2 f_j) / sqrt(2 f_j (1 - f_j)). SNPs with f_j in {0, 1}
(monomorphic) become all-zero columns, with a log line, so that P stays what was asked.

Expression normalisation. The OneK1K `.tmm.bed.gz` (the default) is TMM-normalised by
its publisher and used as stored; raw counts can be read as log(1 + CPM). By default the
regression target is used as stored; `expression_standardization="train"` standardises it
with the training split's mean and sd (data-dependent, NOT covered).

SNP positions. The OneK1K genotypes have no .bim, so their SNPs are known only by index
(their order along chr22): no cis window can be formed and SNPs are chosen by index
range, which may hold no eQTL of the gene. HapMap YRI has positions (window selection
works) but no expression, hence the semi-synthetic source.

Privacy of the pre-processing. The DP guarantee of a model trained on these features
covers only what the training algorithm touches. The DEFAULTS are privacy-free: every
sample's features and target are a function of that sample's own record and public
constants, so changing one record changes only its own row.
  * Genotypes, standardization="public" (default): "public_freq" when public allele
    frequencies exist (the MAFs a simulation drew, or reference-panel frequencies passed as
    `public_allele_freq`), else "centered", g - 1, which needs no statistic at all and keeps
    every entry in [-1, 1] (so ||x|| <= sqrt(P)).
  * Missing calls, missing="impute" (default): filled with a public dosage (2 f from public
    frequencies, else 1, the centre of the 0/1/2 range).
  * Expression, expression_standardization="none" (default): used as stored.
Data-dependent options remain, as explicit choices listed in `EqtlData.not_covered` (quote
it in the privacy report): "train_freq" (frequencies estimated from the training split),
missing="impute_mean" (per-SNP means over all samples in the file, test included),
expression_standardization="train" (training mean and sd). Two further disclosures are
outside any choice here and are also listed: a stored expression file may have been
normalised across samples by its publisher (the OneK1K TMM file over all 94 donors), and a
semi-synthetic target ("plink_simulated") is simulated from the whole sample's genotypes.
"""

import dataclasses
import gzip
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Literal

from absl import logging
from bed_reader import open_bed
import numpy as np
import pandas as pd

from dpjax.data import paths

RngLike = np.random.Generator | int
Source = Literal["simulated", "plink_simulated", "plink_expression"]
Standardization = Literal["public", "public_freq", "centered", "train_freq"]
Missing = Literal["impute", "impute_mean", "error"]
ExpressionStandardization = Literal["none", "train"]

# What a DP guarantee on a model trained from EqtlData does NOT cover, for the privacy report.
NOT_COVERED_TRAIN_FREQ = (
    "eQTL genotypes standardised with allele frequencies estimated from the training split "
    "(standardization='train_freq'): a statistic of the private data, NOT covered")
NOT_COVERED_MEAN_IMPUTATION = (
    "eQTL missing genotype calls mean-imputed with per-SNP means over all samples in the file, "
    "test samples included (missing='impute_mean'): NOT covered")
NOT_COVERED_EXPRESSION_TRAIN = (
    "eQTL expression standardised with the training split's mean and sd "
    "(expression_standardization='train'): NOT covered")
NOT_COVERED_PUBLISHER_NORMALISATION = (
    "eQTL expression used as stored: any normalisation its publisher applied across samples "
    "(the OneK1K .tmm.bed.gz is TMM-normalised over all 94 donors, test donors included) is "
    "NOT covered")
NOT_COVERED_SEMI_SYNTHETIC = (
    "semi-synthetic eQTL target (source='plink_simulated'): expression simulated from the whole "
    "sample's genotypes (allele frequencies and realised genetic variance), so one sample's "
    "genotypes affect every simulated target: NOT covered")

HAPMAP_PREFIX = "genotypes/hapmap_yri/plinkhapmap"
ONEK1K_PREFIX = "genotypes/onek1k_chr22_n94/chr22.n94"
ONEK1K_EXPRESSION = "genotypes/onek1k_chr22_n94/n94_CD14_positive_monocyte.tmm.bed.gz"
ONEK1K_GENES = "genotypes/onek1k_chr22_n94/genelist_chr22.tsv"

_BED_MAGIC = b"\x6c\x1b\x01"  # PLINK 1 binary, SNP-major
_IDS_SHOWN = 5


def as_rng(rng_or_seed: RngLike) -> np.random.Generator:
  """A numpy Generator from a Generator (used as is) or an integer seed."""
  if isinstance(rng_or_seed, np.random.Generator):
    return rng_or_seed
  if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
    return np.random.default_rng(int(rng_or_seed))
  raise TypeError(
      f"expected a numpy Generator or an integer seed, got {type(rng_or_seed).__name__}; "
      "pass np.random.default_rng(seed) or the seed itself.")


# ----------------------------------------------------------------------------
# Simulation


def simulate_genotypes(
    rng: RngLike,
    n: int,
    p: int,
    maf_range: tuple[float, float] = (0.05, 0.5),
) -> tuple[np.ndarray, np.ndarray]:
  """Draws n x p genotypes, SNP j ~ Binomial(2, MAF_j) with MAF_j ~ Uniform(maf_range).

  Returns:
    (genotypes, maf): int8 genotypes in {0, 1, 2} of shape (n, p), and the drawn MAFs,
    shape (p,). The MAFs are simulation parameters, not sample statistics, so they are
    public and may standardise the genotypes without privacy cost ("public_freq").
  """
  low, high = maf_range
  if not 0.0 < low <= high <= 0.5:
    raise ValueError(f"maf_range={maf_range} must satisfy 0 < low <= high <= 0.5.")
  if n < 1 or p < 1:
    raise ValueError(f"n={n} and p={p} must both be at least 1.")
  rng = as_rng(rng)
  maf = rng.uniform(low, high, size=p)
  genotypes = rng.binomial(2, maf[None, :], size=(n, p)).astype(np.int8)
  return genotypes, maf


def allele_frequencies(genotypes: np.ndarray) -> np.ndarray:
  """Frequency of the counted allele per SNP: the column mean of 0/1/2 genotypes over 2."""
  return np.asarray(genotypes, dtype=np.float64).mean(axis=0) / 2.0


def standardize_genotypes(genotypes: np.ndarray, allele_freq: np.ndarray) -> np.ndarray:
  """(g - 2f) / sqrt(2f(1-f)) per SNP; monomorphic SNPs (f in {0, 1}) become zero columns.

  `allele_freq` says where the statistics come from (training split, public reference,
  simulation truth); see the module docstring for what that means for privacy.
  """
  genotypes = np.asarray(genotypes, dtype=np.float32)
  allele_freq = np.asarray(allele_freq, dtype=np.float64)
  if allele_freq.shape != genotypes.shape[1:]:
    raise ValueError(
        f"allele_freq has shape {allele_freq.shape} but genotypes have {genotypes.shape[1]} SNPs.")
  if not np.all(np.isfinite(allele_freq)) or np.any((allele_freq < 0) | (allele_freq > 1)):
    raise ValueError("allele_freq must be finite and in [0, 1]; impute missing genotypes first.")
  variance = 2.0 * allele_freq * (1.0 - allele_freq)
  polymorphic = variance > 0
  if not np.all(polymorphic):
    logging.info("standardize_genotypes: %d of %d SNPs are monomorphic; set to zero.",
                 int(np.sum(~polymorphic)), allele_freq.size)
  scale = np.where(polymorphic, 1.0 / np.sqrt(np.where(polymorphic, variance, 1.0)), 0.0)
  return ((genotypes - 2.0 * allele_freq) * scale).astype(np.float32)


def simulate_expression(
    rng: RngLike,
    genotypes_std: np.ndarray,
    h2: float,
    num_causal: int,
) -> tuple[np.ndarray, np.ndarray]:
  """y = X_std beta + e with `num_causal` causal SNPs and heritability h2.

  Causal SNPs are drawn without replacement among the non-constant columns, with effects
  beta_c ~ N(0, 1) then rescaled so that the sample variance of g = X_std beta is exactly
  h2; e ~ N(0, 1 - h2). Hence E var(y) = 1 and var(g) / var(y) = h2 in expectation. The
  rescaling is done on the realised g (as GCTA's simulator does) rather than relying on
  var(x_j) = 1 and independent SNPs, so the target holds also under real linkage.

  Returns:
    (y, beta): float64 arrays of shapes (n,) and (p,); beta is zero off the causal SNPs.
  """
  if not 0.0 <= h2 <= 1.0:
    raise ValueError(f"h2={h2} must be in [0, 1].")
  rng = as_rng(rng)
  x = np.asarray(genotypes_std, dtype=np.float64)
  n, p = x.shape
  varying = np.flatnonzero(x.std(axis=0) > 0)
  if not 1 <= num_causal <= varying.size:
    raise ValueError(
        f"num_causal={num_causal} must be between 1 and the {varying.size} non-constant SNPs "
        f"(of p={p}).")
  causal = np.sort(rng.choice(varying, size=num_causal, replace=False))
  effects = rng.standard_normal(num_causal)
  noise = rng.standard_normal(n) * math.sqrt(1.0 - h2)
  genetic_variance = np.var(x[:, causal] @ effects)
  if genetic_variance <= 0:
    raise ValueError("the causal SNPs give a constant genetic value; use more samples or SNPs.")
  beta = np.zeros(p)
  beta[causal] = effects * math.sqrt(h2 / genetic_variance)
  return x @ beta + noise, beta


# ----------------------------------------------------------------------------
# PLINK genotypes


@dataclasses.dataclass(frozen=True)
class PlinkGenotypes:
  """Genotypes read from a PLINK 1 binary file set.

  Attributes:
    genotypes: (n, p) float32, counts of the A1 allele in {0, 1, 2}; missing calls
      filled with the public `impute_value` (missing="impute") or the per-SNP mean
      (missing="impute_mean", then fractional).
    sample_ids: (n,) IIDs from the .fam.
    snp_ids: (p,) ids from the .bim, or "snp<index>" when there is no .bim.
    chromosomes, positions: (p,) from the .bim (positions in bp), or None without a .bim.
    snp_indices: (p,) column of each SNP in the file.
    source: the .bed file read.
  """
  genotypes: np.ndarray
  sample_ids: np.ndarray
  snp_ids: np.ndarray
  chromosomes: np.ndarray | None
  positions: np.ndarray | None
  snp_indices: np.ndarray
  source: str


def _plink_files(path_prefix: str | os.PathLike) -> dict[str, pathlib.Path | None]:
  """The .bed/.bim/.fam paths (plain or .gz) for a prefix; .bim may be None."""
  prefix = str(path_prefix)
  for suffix in (".gz", ".bed", ".bim", ".fam"):
    if prefix.endswith(suffix):
      prefix = prefix[: -len(suffix)]
  found = {}
  for ext in ("bed", "bim", "fam"):
    plain, zipped = pathlib.Path(f"{prefix}.{ext}"), pathlib.Path(f"{prefix}.{ext}.gz")
    found[ext] = plain if plain.is_file() else zipped if zipped.is_file() else None
  for ext in ("bed", "fam"):
    if found[ext] is None:
      raise FileNotFoundError(
          f"no {prefix}.{ext} or {prefix}.{ext}.gz: pass the PLINK prefix, e.g. "
          "'dir/chr22' for dir/chr22.bed + dir/chr22.fam (+ optional .bim).")
  return found


def _gunzip_into(path: pathlib.Path, directory: str, ext: str) -> pathlib.Path:
  """Decompresses `path` when it ends in .gz; returns the path bed_reader should read."""
  if path.suffix != ".gz":
    return path
  target = pathlib.Path(directory) / f"plink.{ext}"
  with gzip.open(path, "rb") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
  return target


def _count_lines(path: pathlib.Path) -> int:
  """Non-empty lines of a text file (.fam, .bim)."""
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def _snp_count_from_bed_size(bed_path: pathlib.Path, num_samples: int, label: str) -> int:
  """SNP count of a SNP-major .bed: (size - 3) / ceil(n / 4), checked to be whole.

  A .fam off by a few samples within the same ceil(n / 4) goes unnoticed here; with a
  .bim the SNP count is cross-checked as well.
  """
  with open(bed_path, "rb") as f:
    magic = f.read(3)
  if magic != _BED_MAGIC:
    raise ValueError(f"{label} is not a SNP-major PLINK 1 .bed file (magic bytes {magic!r}).")
  bytes_per_snp = math.ceil(num_samples / 4)
  body = bed_path.stat().st_size - 3
  if body % bytes_per_snp:
    raise ValueError(
        f"{label} has {body} genotype bytes, not a multiple of ceil({num_samples}/4)="
        f"{bytes_per_snp}: the .fam sample count does not match this .bed.")
  return body // bytes_per_snp


def _chromosome_name(chromosome: str | int) -> str:
  """'chr22', '22' and 22 all name chromosome '22'."""
  return str(chromosome).removeprefix("chr")


def _window_indices(
    chromosomes: np.ndarray,
    positions: np.ndarray,
    window: tuple[str | int, int, int],
    num_snps: int | None,
) -> np.ndarray:
  """Indices of SNPs within centre +- half_width on a chromosome, nearest num_snps kept."""
  chromosome, centre, half_width = window
  names = np.array([_chromosome_name(c) for c in chromosomes])
  on_chromosome = names == _chromosome_name(chromosome)
  distance = np.abs(positions.astype(np.int64) - int(centre))
  inside = np.flatnonzero(on_chromosome & (distance <= half_width))
  if num_snps is not None and inside.size > num_snps:
    inside = np.sort(inside[np.argsort(distance[inside], kind="stable")[:num_snps]])
  return inside


def _handle_missing(genotypes: np.ndarray, missing: str, label: str,
                    impute_value: float | np.ndarray = 1.0) -> np.ndarray:
  """Fills NaN calls with a public value or the per-SNP mean (with a log line), or refuses
  them, naming the file.

  missing="impute": the public `impute_value` (scalar or per-SNP), which does not depend on
  the samples. missing="impute_mean": the SNP's mean over all samples of the file, a
  statistic of the data (NOT covered by DP; see the module docstring).
  """
  is_missing = np.isnan(genotypes)
  num_missing = int(is_missing.sum())
  if num_missing == 0:
    return genotypes
  snps_hit = int(is_missing.any(axis=0).sum())
  if missing == "error":
    raise ValueError(
        f"{label}: {num_missing} missing genotype calls in {snps_hit} SNPs; pass "
        "missing='impute' to fill them with a public dosage, or filter the file first "
        "(plink --geno).")
  if missing == "impute":
    fill = np.broadcast_to(np.asarray(impute_value, dtype=np.float64), genotypes.shape[1:])
    if not np.all(np.isfinite(fill)) or np.any((fill < 0) | (fill > 2)):
      raise ValueError(f"impute_value must be a dosage in [0, 2], got {impute_value!r}.")
    logging.info(
        "%s: imputed %d missing genotype calls in %d SNPs with a public dosage (not a "
        "statistic of the samples).", label, num_missing, snps_hit)
    return np.where(is_missing, fill[None, :], genotypes).astype(np.float32)
  counts = (~is_missing).sum(axis=0)
  means = np.where(counts > 0, np.nansum(genotypes, axis=0) / np.maximum(counts, 1), 0.0)
  all_missing = int(np.sum(counts == 0))
  logging.info(
      "%s: mean-imputed %d missing genotype calls in %d SNPs (%d SNPs entirely missing, "
      "set to 0 and so monomorphic); data-dependent, NOT covered by DP.", label, num_missing,
      snps_hit, all_missing)
  return np.where(is_missing, means[None, :], genotypes).astype(np.float32)


def load_plink(
    path_prefix: str | os.PathLike,
    *,
    snp_start: int = 0,
    num_snps: int | None = None,
    window: tuple[str | int, int, int] | None = None,
    missing: Missing = "impute",
    impute_value: float | np.ndarray = 1.0,
) -> PlinkGenotypes:
  """Reads PLINK 1 binary genotypes (.bed/.fam, optional .bim; each may be .gz) with bed_reader.

  Gzipped files are decompressed into a temporary folder that is removed afterwards.
  Without a .bim the SNP count comes from the .bed size, SNPs are named by index, and
  positions are None. bed_reader counts A1 alleles (the PLINK convention).

  Args:
    path_prefix: 'dir/name' for dir/name.bed(.gz) etc.; a full .bed path also works.
    snp_start, num_snps: read SNPs [snp_start, snp_start + num_snps) (all when None).
    window: (chromosome, centre_bp, half_width_bp): SNPs within the window instead, the
      `num_snps` nearest the centre when given. Needs a .bim (positions).
    missing: "impute" fills missing calls with the public `impute_value` (default 1, the
      centre of the 0/1/2 dosage range; a scalar or one value per SNP read); "impute_mean"
      with the per-SNP mean over all samples (data-dependent, NOT covered by DP); "error"
      raises. Each logs a line.
  """
  if missing not in ("impute", "impute_mean", "error"):
    raise ValueError(f"missing={missing!r} must be 'impute', 'impute_mean' or 'error'.")
  files = _plink_files(path_prefix)
  label = str(files["bed"])
  with tempfile.TemporaryDirectory(prefix="dpjax_plink_") as tmp:
    local = {ext: None if path is None else _gunzip_into(path, tmp, ext)
             for ext, path in files.items()}
    num_samples = _count_lines(local["fam"])
    num_file_snps = _snp_count_from_bed_size(local["bed"], num_samples, label)
    num_bim_snps = None if local["bim"] is None else _count_lines(local["bim"])
    if num_bim_snps not in (None, num_file_snps):
      raise ValueError(
          f"{files['bim']} lists {num_bim_snps} SNPs but {label} holds "
          f"{num_file_snps} for the {num_samples} samples of {files['fam']}: the files do "
          "not belong together.")
    bim_location = local["bim"] or pathlib.Path(tmp) / "absent.bim"
    with open_bed(local["bed"], iid_count=num_samples, sid_count=num_file_snps,
                  fam_location=local["fam"], bim_location=bim_location) as bed:
      has_bim = local["bim"] is not None
      chromosomes = np.asarray(bed.chromosome) if has_bim else None
      positions = np.asarray(bed.bp_position) if has_bim else None
      if window is not None:
        if not has_bim:
          raise ValueError(
              f"{label} has no .bim, so SNP positions are unknown and window={window} cannot "
              "be applied; select SNPs by index with snp_start/num_snps instead.")
        if snp_start:
          raise ValueError("pass either window or snp_start, not both.")
        indices = _window_indices(chromosomes, positions, window, num_snps)
        if indices.size == 0:
          raise ValueError(f"{label}: no SNP within window={window}.")
      else:
        stop = num_file_snps if num_snps is None else snp_start + num_snps
        if not 0 <= snp_start < stop <= num_file_snps:
          raise ValueError(
              f"{label} has {num_file_snps} SNPs; snp_start={snp_start}, num_snps={num_snps} "
              "is out of range.")
        indices = np.arange(snp_start, stop)
      genotypes = bed.read(index=np.s_[:, indices], dtype="float32")
      sample_ids = np.asarray(bed.iid).astype(str)
      snp_ids = (np.asarray(bed.sid)[indices].astype(str) if has_bim
                 else np.array([f"snp{i}" for i in indices]))
  return PlinkGenotypes(
      genotypes=_handle_missing(genotypes, missing, label, impute_value),
      sample_ids=sample_ids,
      snp_ids=snp_ids,
      chromosomes=None if chromosomes is None else chromosomes[indices].astype(str),
      positions=None if positions is None else positions[indices],
      snp_indices=indices,
      source=label)


# ----------------------------------------------------------------------------
# Expression


def _read_expression_table(path: str | os.PathLike) -> pd.DataFrame:
  """A BED-like genes x samples table: chr, start, end, gene id, then one column per sample."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt") as f:
    # Read the header by hand: pandas would silently rename a repeated sample id.
    header = f.readline().rstrip("\n").split("\t")
  if len(header) < 5:
    raise ValueError(
        f"{path}: expected tab-separated columns chr, start, end, gene_id, then sample ids; "
        f"found {header[:6]}.")
  sample_ids = pd.Index(header[4:])
  duplicated = sample_ids[sample_ids.duplicated()]
  if len(duplicated):
    raise ValueError(f"{path}: duplicated sample ids {list(duplicated[:_IDS_SHOWN])}.")
  table = pd.read_csv(path, sep="\t")
  return table.set_index(table.columns[3])


def load_expression_bed(
    path: str | os.PathLike,
    gene_id: str,
    *,
    normalization: Literal["as_is", "log1p_cpm"] = "as_is",
) -> pd.Series:
  """One gene's expression from a BED-like genes x samples matrix, keyed by sample id.

  The first four columns are chromosome, start, end and gene id (`#Chr start end
  phenotype_id` in the OneK1K files); every further column is a sample.

  Normalisation:
    "as_is": values as stored, for already normalised files such as the OneK1K
      `.tmm.bed.gz` (TMM-normalised by jaxqtl's authors).
    "log1p_cpm": for raw counts: log(1 + 1e6 * count / library size), the library size
      being each sample's total over all genes in the file.
  Standardising across samples is left to the caller (make_eqtl_data uses the training
  split), so this function never mixes train and test statistics.
  """
  table = _read_expression_table(path)
  if gene_id not in table.index:
    raise ValueError(
        f"gene {gene_id!r} is not in {path}; it has {len(table)} genes, e.g. "
        f"{list(table.index[:_IDS_SHOWN])}.")
  values = table.iloc[:, 3:].astype(np.float64)
  if normalization == "log1p_cpm":
    if (values.to_numpy() < 0).any():
      raise ValueError(f"{path} has negative values: not raw counts; use normalization='as_is'.")
    library_size = values.sum(axis=0)
    if (library_size <= 0).any():
      raise ValueError(f"{path}: samples with zero total counts: "
                       f"{list(library_size.index[library_size <= 0][:_IDS_SHOWN])}.")
    row = np.log1p(1e6 * values.loc[gene_id] / library_size)
  elif normalization == "as_is":
    row = values.loc[gene_id]
  else:
    raise ValueError(f"normalization={normalization!r} must be 'as_is' or 'log1p_cpm'.")
  if isinstance(row, pd.DataFrame):
    raise ValueError(f"gene {gene_id!r} appears {len(row)} times in {path}.")
  row.index = row.index.astype(str)
  return row.rename(gene_id)


def match_samples(
    genotype_ids: Sequence[str],
    expression_ids: Sequence[str],
    genotype_file: str,
    expression_file: str,
) -> tuple[np.ndarray, np.ndarray]:
  """Row indices into genotypes and expression of the shared sample ids, in genotype order.

  No shared id raises an error naming both files with a few ids of each; a partial
  overlap keeps the intersection with a log line.
  """
  genotype_ids = np.asarray(genotype_ids).astype(str)
  expression_ids = np.asarray(expression_ids).astype(str)
  position_in_expression = {sample: i for i, sample in enumerate(expression_ids)}
  genotype_rows = np.array([i for i, sample in enumerate(genotype_ids)
                            if sample in position_in_expression], dtype=np.int64)
  if genotype_rows.size == 0:
    raise ValueError(
        f"no sample id is shared between genotypes {genotype_file} (e.g. "
        f"{list(genotype_ids[:_IDS_SHOWN])}) and expression {expression_file} (e.g. "
        f"{list(expression_ids[:_IDS_SHOWN])}); the .fam IID column must match the "
        "expression column names.")
  expression_rows = np.array([position_in_expression[s] for s in genotype_ids[genotype_rows]],
                             dtype=np.int64)
  if genotype_rows.size < max(genotype_ids.size, expression_ids.size):
    logging.info(
        "matched %d samples: %d genotyped in %s, %d with expression in %s; using the "
        "intersection.", genotype_rows.size, genotype_ids.size, genotype_file,
        expression_ids.size, expression_file)
  return genotype_rows, expression_rows


def load_gene_positions(path: str | os.PathLike) -> pd.DataFrame:
  """Gene positions indexed by gene id, columns `chromosome` (str) and `tss` (1-based bp).

  Reads either genelist_chr22.tsv (`phenotype_id chr start end`, start = end = TSS) or a
  BED-like expression file (`#Chr start end phenotype_id ...`, 0-based start, so the TSS
  is `end`); in both, `end` is the 1-based TSS.
  """
  table = pd.read_csv(path, sep="\t")
  lower = {name.lower().lstrip("#"): name for name in table.columns}
  gene_column = next((lower[k] for k in ("phenotype_id", "gene_id", "gene") if k in lower), None)
  chrom_column = next((lower[k] for k in ("chr", "chrom", "chromosome") if k in lower), None)
  if gene_column is None or chrom_column is None or "end" not in lower:
    raise ValueError(
        f"{path}: expected columns for gene id (phenotype_id), chromosome (chr) and end; "
        f"found {list(table.columns[:6])}.")
  return pd.DataFrame({
      "chromosome": table[chrom_column].astype(str).str.removeprefix("chr").to_numpy(),
      "tss": table[lower["end"]].astype(np.int64).to_numpy(),
  }, index=table[gene_column].astype(str).to_numpy())


def cis_window_snps(
    gene_id: str,
    gene_positions_path: str | os.PathLike,
    snp_chromosomes: np.ndarray | None,
    snp_positions: np.ndarray | None,
    *,
    window_bp: int = 1_000_000,
    max_snps: int | None = None,
) -> np.ndarray:
  """Indices of SNPs within `window_bp` of a gene's TSS, the `max_snps` nearest when given.

  This needs SNP positions, i.e. a .bim. The OneK1K genotypes come without one: their
  SNPs are known only by index (their order along chr22), so no cis window can be
  formed; this raises and says so. For those, select SNPs by index (load_plink's
  snp_start/num_snps) and expect little signal unless the range holds a cis-eQTL.
  """
  if snp_positions is None or snp_chromosomes is None:
    raise ValueError(
        "SNP positions are unknown (the genotypes have no .bim), so a cis window around "
        f"{gene_id} cannot be formed; choose SNPs by index (snp_start, num_snps) instead.")
  genes = load_gene_positions(gene_positions_path)
  if gene_id not in genes.index:
    raise ValueError(f"gene {gene_id!r} is not in {gene_positions_path}; e.g. "
                     f"{list(genes.index[:_IDS_SHOWN])}.")
  chromosome, tss = genes.loc[gene_id, "chromosome"], int(genes.loc[gene_id, "tss"])
  return _window_indices(np.asarray(snp_chromosomes), np.asarray(snp_positions),
                         (chromosome, tss, window_bp), max_snps)


# ----------------------------------------------------------------------------
# Assembled regression data


@dataclasses.dataclass(frozen=True)
class EqtlData:
  """Features and targets of one eQTL regression, split into train and test samples.

  x_* are float32 (n, p) standardised genotypes, y_* float32 (n,) expression.
  `metadata` holds what the experiment may report: source, sizes, h2, SNP ids, the
  simulated effects `true_beta` (on the generating standardisation) when known, and the
  genotype standardisation x = (g - genotype_center) * genotype_scale.
  `not_covered` lists the pre-processing that depends on the private data (or was done by a
  publisher across samples) and so is NOT covered by a DP guarantee on a model trained from
  this data; the privacy report must quote it. Empty for the privacy-free defaults on
  simulated data.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  description: str
  metadata: dict = dataclasses.field(default_factory=dict)
  not_covered: tuple[str, ...] = ()


def split_samples(rng: RngLike, n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) sample indices; round(test_fraction * n) samples go to test."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction} must be in (0, 1).")
  num_test = int(round(test_fraction * n))
  if not 1 <= num_test <= n - 2:
    raise ValueError(
        f"test_fraction={test_fraction} of n={n} leaves {num_test} test and {n - num_test} "
        "train samples; need at least 1 test and 2 train samples.")
  order = as_rng(rng).permutation(n)
  return np.sort(order[num_test:]), np.sort(order[:num_test])


def resolve_standardization(standardization: Standardization,
                            public_freq: np.ndarray | None) -> str:
  """"public" -> "public_freq" when public frequencies exist, else "centered"; others as is."""
  if standardization == "public":
    return "public_freq" if public_freq is not None else "centered"
  if standardization not in ("public_freq", "centered", "train_freq"):
    raise ValueError(f"standardization={standardization!r} must be 'public', 'public_freq', "
                     "'centered' or 'train_freq'.")
  return standardization


def genotype_standardization(
    genotypes: np.ndarray,
    train: np.ndarray,
    standardization: Standardization,
    public_freq: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
  """(center, scale), each (p,) float64, with features x = (g - center) * scale.

  "public_freq": center 2f, scale 1 / sqrt(2f(1-f)) from public frequencies (0 for a
  monomorphic SNP); "centered": center 1, scale 1; "train_freq": as public_freq with f
  estimated from `genotypes[train]` (data-dependent, NOT covered). The first two (and
  "public", which picks one of them) do not look at `genotypes` at all.
  """
  resolved = resolve_standardization(standardization, public_freq)
  p = np.shape(genotypes)[1]
  if resolved == "centered":
    return np.ones(p), np.ones(p)
  if resolved == "train_freq":
    freq = allele_frequencies(np.asarray(genotypes)[train])
  else:
    if public_freq is None:
      raise ValueError(
          "standardization='public_freq' needs allele frequencies that do not come from the "
          "samples: source='simulated' has them; for PLINK sources pass public_allele_freq "
          "(e.g. reference-panel frequencies). Otherwise use 'public' or 'centered'.")
    freq = np.asarray(public_freq, dtype=np.float64)
  if freq.shape != (p,):
    raise ValueError(f"allele frequencies have shape {freq.shape}, expected ({p},).")
  if not np.all(np.isfinite(freq)) or np.any((freq < 0) | (freq > 1)):
    raise ValueError("allele frequencies must be finite and in [0, 1].")
  variance = 2.0 * freq * (1.0 - freq)
  polymorphic = variance > 0
  scale = np.where(polymorphic, 1.0 / np.sqrt(np.where(polymorphic, variance, 1.0)), 0.0)
  return 2.0 * freq, scale


def _features(
    genotypes: np.ndarray,
    train: np.ndarray,
    standardization: Standardization,
    public_freq: np.ndarray | None,
) -> np.ndarray:
  """Standardised features for all samples, with statistics from the chosen source."""
  resolved = resolve_standardization(standardization, public_freq)
  if resolved == "centered":
    return np.asarray(genotypes, dtype=np.float32) - 1.0
  center, _ = genotype_standardization(genotypes, train, resolved, public_freq)
  return standardize_genotypes(genotypes, center / 2.0)


def _resolve(path: str | os.PathLike | None, default: str, data_dir: str | None,
             what: str) -> pathlib.Path:
  """`path` when given, else `default` under the data directory."""
  if path is not None:
    return pathlib.Path(path)
  return paths.require_data_dir(data_dir or paths.default_data_dir(), what) / default


def _choose_samples(rng: np.random.Generator, available: int, n: int | None, label: str):
  """All sample rows when n is None, else a random sorted subset of n."""
  if n is None or n == available:
    return np.arange(available)
  if not 3 <= n <= available:
    raise ValueError(f"n={n} samples requested but {label} has {available}; "
                     "pass n=None to use them all.")
  return np.sort(rng.choice(available, size=n, replace=False))


@dataclasses.dataclass(frozen=True)
class _RealSamples:
  genotypes: np.ndarray
  expression: np.ndarray | None  # None: expression is to be simulated
  sample_ids: np.ndarray
  snp_ids: np.ndarray
  what: str


def _real_samples(
    source: Source, rng: np.random.Generator, *, n, p, snp_start, gene_id, plink_prefix,
    expression_path, missing, data_dir, impute_value=1.0) -> _RealSamples:
  """PLINK genotypes of p SNPs, joined to a gene's expression for "plink_expression"."""
  default = HAPMAP_PREFIX if source == "plink_simulated" else ONEK1K_PREFIX
  plink = load_plink(_resolve(plink_prefix, default, data_dir, f"source={source}"),
                     snp_start=snp_start, num_snps=p, missing=missing,
                     impute_value=impute_value)
  snps = f"{plink.source} SNPs {snp_start}..{snp_start + p - 1}"
  rows, expression = np.arange(plink.genotypes.shape[0]), None
  if source == "plink_expression":
    if gene_id is None:
      raise ValueError("source='plink_expression' needs gene_id, e.g. 'ENSG00000100031'.")
    expression_file = _resolve(expression_path, ONEK1K_EXPRESSION, data_dir, "expression")
    gene = load_expression_bed(expression_file, gene_id)
    rows, expression_rows = match_samples(
        plink.sample_ids, gene.index, plink.source, str(expression_file))
    expression = gene.to_numpy()[expression_rows]
    what = f"{snps}, expression of {gene_id} from {expression_file}"
  else:
    what = f"{snps}, simulated expression"
  chosen = _choose_samples(rng, rows.size, n, plink.source)
  return _RealSamples(
      genotypes=plink.genotypes[rows[chosen]],
      expression=None if expression is None else expression[chosen],
      sample_ids=plink.sample_ids[rows[chosen]], snp_ids=plink.snp_ids, what=what)


def _standardize_expression(expression: np.ndarray, train: np.ndarray, gene_id: str):
  """(y - mean) / sd with the training split's statistics (non-private: NOT covered)."""
  mean, std = expression[train].mean(), expression[train].std()
  if std == 0:
    raise ValueError(f"gene {gene_id} has constant expression over the training samples; "
                     "pick an expressed gene.")
  return (expression - mean) / std


def make_eqtl_data(
    source: Source,
    *,
    n: int | None = None,
    p: int = 100,
    h2: float = 0.5,
    num_causal: int = 10,
    seed: int = 0,
    test_fraction: float = 0.2,
    maf_range: tuple[float, float] = (0.05, 0.5),
    standardization: Standardization = "public",
    plink_prefix: str | os.PathLike | None = None,
    expression_path: str | os.PathLike | None = None,
    gene_id: str | None = None,
    snp_start: int = 0,
    missing: Missing = "impute",
    data_dir: str | None = None,
    expression_standardization: ExpressionStandardization = "none",
    public_allele_freq: np.ndarray | None = None,
) -> EqtlData:
  """Builds one eQTL regression data set, reproducible from `seed`.

  Args:
    source: "simulated", "plink_simulated" (real genotypes, simulated expression of
      heritability h2) or "plink_expression" (real genotypes and expression of gene_id).
    n: samples; 1000 for "simulated"; for PLINK sources None means all, fewer draws a
      random subset.
    p: SNPs; for PLINK, SNPs [snp_start, snp_start + p) in file order (positions are not
      used: the OneK1K genotypes have none; see cis_window_snps).
    h2, num_causal: heritability and number of causal SNPs of simulated expression.
    seed: one integer seeds genotypes, expression, sample choice and split (independent
      streams, so e.g. the split does not change the genotypes).
    standardization: "public" (default: "public_freq" when public frequencies exist, else
      "centered"), "public_freq", "centered" or "train_freq" (data-dependent, NOT covered);
      see the module docstring.
    plink_prefix, expression_path: default to HapMap YRI ("plink_simulated") or OneK1K
      chr22 with CD14 monocyte TMM expression ("plink_expression") under the data dir.
    missing: genotype missing calls: "impute" (public dosage 2f from public frequencies,
      else 1; logged), "impute_mean" (per-SNP mean over all samples, NOT covered) or "error".
    expression_standardization: real expression "none" (as stored, default) or "train"
      (training mean and sd, NOT covered).
    public_allele_freq: (p,) allele frequencies that do not come from these samples (e.g. a
      reference panel's) for PLINK sources; used by "public"/"public_freq" and imputation.
      Simulated data use the simulation's MAFs and refuse this argument.

  Returns an EqtlData whose `not_covered` lists every data-dependent choice made.
  """
  if expression_standardization not in ("none", "train"):
    raise ValueError(f"expression_standardization={expression_standardization!r} must be "
                     "'none' or 'train'.")
  if missing not in ("impute", "impute_mean", "error"):
    raise ValueError(f"missing={missing!r} must be 'impute', 'impute_mean' or 'error'.")
  resolve_standardization(standardization, None)  # refuse an unknown name before any reading
  genotype_rng, expression_rng, sample_rng, split_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
  not_covered = []
  if source == "simulated":
    if public_allele_freq is not None:
      raise ValueError("source='simulated' uses the simulation's MAFs as public frequencies; "
                       "public_allele_freq is for PLINK sources.")
    n = 1000 if n is None else n
    genotypes, public_freq = simulate_genotypes(genotype_rng, n, p, maf_range)
    expression, what = None, f"simulated genotypes, MAF ~ U{tuple(maf_range)}"
  elif source in ("plink_simulated", "plink_expression"):
    public_freq = None
    if public_allele_freq is not None:
      public_freq = np.asarray(public_allele_freq, dtype=np.float64)
      if public_freq.shape != (p,):
        raise ValueError(f"public_allele_freq has shape {public_freq.shape}; expected ({p},), "
                         "one frequency per SNP read.")
    impute_value = 1.0 if public_freq is None else 2.0 * public_freq
    real = _real_samples(
        source, sample_rng, n=n, p=p, snp_start=snp_start, gene_id=gene_id,
        plink_prefix=plink_prefix, expression_path=expression_path, missing=missing,
        data_dir=data_dir, impute_value=impute_value)
    genotypes, expression, what = real.genotypes, real.expression, real.what
    if missing == "impute_mean":
      not_covered.append(NOT_COVERED_MEAN_IMPUTATION)
  else:
    raise ValueError(f"source={source!r} must be 'simulated', 'plink_simulated' or "
                     "'plink_expression'.")
  resolved = resolve_standardization(standardization, public_freq)
  metadata = {"source": source, "seed": seed, "standardization": resolved,
              "expression_standardization": expression_standardization, "missing": missing}
  if source != "simulated":
    metadata.update(sample_ids=real.sample_ids, snp_ids=real.snp_ids)

  num_samples = genotypes.shape[0]
  train, test = split_samples(split_rng, num_samples, test_fraction)
  if expression is not None:
    not_covered.append(NOT_COVERED_PUBLISHER_NORMALISATION)
    if expression_standardization == "train":
      y = _standardize_expression(expression, train, gene_id)
      what += ", standardised with the training mean and sd (NOT covered)"
      not_covered.append(NOT_COVERED_EXPRESSION_TRAIN)
    else:
      y = expression
      what += ", used as stored"
  else:
    # The truth is defined on the sample's own standardisation (public frequencies when
    # simulated); the model's features below may use other statistics, an affine change
    # per SNP that a regression with intercept absorbs.
    generating_freq = public_freq if public_freq is not None else allele_frequencies(genotypes)
    y, beta = simulate_expression(
        expression_rng, standardize_genotypes(genotypes, generating_freq), h2, num_causal)
    what += f", h2={h2}, {num_causal} causal SNPs"
    metadata.update(h2=h2, num_causal=num_causal, true_beta=beta)
    if source == "plink_simulated":  # real genotypes: the target couples all samples
      not_covered.append(NOT_COVERED_SEMI_SYNTHETIC)
  if resolved == "train_freq":
    not_covered.append(NOT_COVERED_TRAIN_FREQ)
  center, scale = genotype_standardization(genotypes, train, resolved, public_freq)
  x = _features(genotypes, train, resolved, public_freq)
  y = np.asarray(y, dtype=np.float32)
  metadata.update(n_train=train.size, n_test=test.size, p=x.shape[1],
                  genotype_center=center, genotype_scale=scale, not_covered=list(not_covered))
  description = (f"{source}: {what}; N={num_samples} ({train.size} train / {test.size} test), "
                 f"P={x.shape[1]}, genotypes standardised by {resolved}"
                 f"{' (NOT covered)' if resolved == 'train_freq' else ''}, seed={seed}")
  return EqtlData(x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                  description=description, metadata=metadata, not_covered=tuple(not_covered))
