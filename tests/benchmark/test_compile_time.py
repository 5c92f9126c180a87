"""The microbatched step is one program whatever the number of microbatches."""

from experiments.benchmark import compile_time


def test_program_size_does_not_grow_with_the_microbatches():
  few = compile_time.measure("linear", microbatch_size=2, chunks=2, method="ghost")
  many = compile_time.measure("linear", microbatch_size=2, chunks=16, method="ghost",
                              compile=False)  # the program text is all this test needs
  assert (few["logical_batch"], many["logical_batch"]) == (4, 32)
  # Only shape constants differ: a few characters, never a copy of the body per microbatch.
  assert abs(many["hlo_chars"] - few["hlo_chars"]) < 100
  assert few["compile_s"] > 0 and few["compile_cpu_s"] >= 0
