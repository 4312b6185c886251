"""Decision Mamba: the shared package of the gym and Atari entry points (README).

Importing it, or any module of it, changes nothing process-wide. The entry points call
`decision_mamba.cpu.configure_process()` first (thread spin, numba's threading layer and
vector width, malloc reuse: see its docstring).
"""
