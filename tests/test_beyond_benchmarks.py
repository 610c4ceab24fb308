"""One tiny run of each 'beyond the paper' benchmark: every number it returns is finite."""

import math

from benchmarks import chain_quality, landscape_valleys


def test_chain_quality_tiny_run():
  rows = chain_quality.main(
    [
      "--num-train",
      "200",
      "--train-steps",
      "2",
      "--repeats",
      "2",
      "--reference-steps",
      "4",
      "--steps",
      "2",
      "--gammas",
      "1.0",
      "--frictions",
      "0.5",
      "--batch",
      "8",
    ]
  )
  assert len(rows) == 4  # 2 temperatures x (SGLD, SGHMC)
  assert all(math.isfinite(r["rel_rms_error"]) and r["rel_rms_error"] > 0 for r in rows)
  assert all(r["sgld_error/this"] == 1.0 for r in rows if r["sampler"] == "sgld")


def test_landscape_valleys_tiny_run():
  rows = landscape_valleys.main(
    ["--num-steps", "2", "--outer-steps", "2", "--seeds", "1", "--starts", "3", "--settings", "1"]
  )
  # The ideal runs are deterministic: from -4, 0, 4 at T = 1, sigma = 0.7 both smoothed
  # objectives keep both valleys; -4 and 0 end in the wide one, 4 in the sharp one.
  assert rows[0]["ideal_entropy_wide"] == rows[0]["ideal_smooth_wide"] == 2 / 3
  assert all(0 <= v <= 1 for k, v in rows[0].items() if k.endswith("_wide"))
