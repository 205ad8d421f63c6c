"""spa_classify: assign each particle to its `sep` best projections (classify_XX.hdf)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import read_hdf_stack, write_hdf_stack  # noqa: E402
from emflow.spa.classify import CLASSMX_PLANES, classify  # noqa: E402

smk = snakemake  # noqa: F821
mx, _ = read_hdf_stack(smk.input.simmx)
cls = classify(np.asarray(mx, np.float32), smk.params.spa["sep"])
write_hdf_stack(smk.output.classify, cls, [{"classmx_plane": p} for p in CLASSMX_PLANES])
counts = np.bincount(cls[0][cls[1] > 0].astype(int).ravel(), minlength=mx.shape[-1])
log.info("%d particles into %d classes; %d empty, largest %d", cls.shape[1], mx.shape[-1], (counts == 0).sum(), counts.max())
