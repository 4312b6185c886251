"""Not a package: this folder holds the entry point gym/experiment.py, run as a script
(`python gym/experiment.py --config ...`), where the Decision Transformer codebase has it.

Without this file, Python started in the repository root (`python -c`, `python -m ...`,
`python -m pytest`) imports the folder as a namespace package named `gym`, and libraries
that probe for the old OpenAI Gym with `import gym` believe it installed: Stable-Baselines3
then reads `gym.__version__` when it saves a model and fails with an AttributeError.
Refusing the import tells them the truth. Running the script is unaffected (its folder,
not the repository root, is first on sys.path). tests/test_gym_folder.py checks both.
"""

raise ModuleNotFoundError(
    "gym/ in the Decision Mamba repository is the folder of the gym/experiment.py entry point, not OpenAI Gym "
    "(this project uses gymnasium); run it as a script: python gym/experiment.py --config configs/gym/<file>.yaml",
    name="gym")
