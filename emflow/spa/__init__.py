"""The e2refine single-particle loop: project3d, simmx, classify, classaverage, make3d."""
