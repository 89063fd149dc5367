"""jaxvna: visual-neural alignment in JAX/Flax."""

import setuptools

setuptools.setup(
    name="jaxvna",
    version="0.1.0",
    description=("Align images with neural population responses: VNA, DINA, miVAE and "
                 "MIG-Vis in JAX/Flax, with a ground-truth simulator."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The top-level configs/ folder is installed as jaxvna.configs, so that `jaxvna demo`
    # finds its default config wherever it is run from.
    packages=setuptools.find_packages(include=["jaxvna", "jaxvna.*"]) + ["jaxvna.configs"],
    package_dir={"jaxvna.configs": "configs"},
    install_requires=[
        "jax>=0.10,<0.11; python_version<'3.12'",
        "jax>=0.10; python_version>='3.12'",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8",
        "grain>=0.2.18",
        "ml_collections>=1.1",
        "numpy>=2.0",
        "scipy>=1.11",
        "scikit-image>=0.22",  # the offline photographs mixed into simulated images
        "absl-py",
        "importlib_resources",
        "pillow",
        "matplotlib",
        "tqdm",
        "tensorboardX>=2.6",  # TensorBoard event files of every run, without TensorFlow
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6", "pynwb>=4.0",
                 "pytest-xdist>=3.5",  # the suite runs on every core (pyproject.toml)
                 "tensorboard>=2.16",  # its reader checks the event files runs write
                 # the reference forward passes of the pretrained-backbone tests
                 "torch>=2.9", "torchvision>=0.24"],
        "nwb": ["pynwb>=4.0"],  # data.kind="nwb" (jaxvna.data.nwb)
    },
    entry_points={"console_scripts": ["jaxvna = jaxvna.cli:run"]},
)
