"""Every test process uses MKL in strict CNR mode, as every stage run as a program does (src/mkl.py): set
before any test multiplies anything, so in-process training gives the bits a stage process gives."""
from src.mkl import use_strict_cnr

use_strict_cnr()
