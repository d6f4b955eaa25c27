"""Numba kernels. This package imports numpy and numba only.

Every kernel here has a slow, obvious twin in ``tests/naive.py`` and a test that the two
agree in float32 and float64. Kernels are compiled with ``cache=True``; none uses blanket
``fastmath`` (NaN and inf handling matters here).
"""
