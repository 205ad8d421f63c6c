"""spa_classify: assign each particle to its `sep` best projections (refine_loop.stage_classify)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import read_hdf_stack, write_hdf_stack  # noqa: E402
from emflow.spa.classify import CLASSMX_PLANES  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_classify  # noqa: E402


def main(simmx_path: str, out: str, spa: dict) -> None:
    mx = np.asarray(read_hdf_stack(simmx_path)[0], np.float32)
    cls = stage_classify(mx, RefineOptions.from_config(spa))
    write_hdf_stack(out, cls, [{"classmx_plane": p} for p in CLASSMX_PLANES])
    counts = np.bincount(cls[0][cls[1] > 0].astype(int).ravel(), minlength=mx.shape[-1])
    log.info("%d particles into %d classes%s; %d empty, largest %d", cls.shape[1], mx.shape[-1],
             " (simvec)" if spa["simvec"] else "", (counts == 0).sum(), counts.max())


main(snakemake.input.simmx, snakemake.output.classify, snakemake.params.spa)  # noqa: F821
