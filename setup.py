"""posjax: positional encodings and length extrapolation in JAX/Flax."""

import setuptools

setuptools.setup(
    name="posjax",
    version="0.1.0",
    description="Positional encodings and length extrapolation for Transformer LMs in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # jax >= 0.10 (tested here; 0.11 on the GPU machines) and grain
    # 0.2.18 need Python 3.11 or newer.
    python_requires=">=3.11",
    # Namespace packages too: posjax/nn has no __init__.py. corpora/ is data of posjax.data.
    packages=setuptools.find_namespace_packages(
        include=["posjax", "posjax.*"], exclude=["posjax.data.corpora"]) + ["posjax._configs"],
    # The config files of configs/ are installed with the package as posjax/_configs/, so that
    # `posjax.configs.load_config("lm.py:tiny")` finds them after a non-editable install too
    # (`--config=configs/lm.py` from the repository root reads the repository's own copy).
    package_dir={"posjax._configs": "configs"},
    package_data={"posjax.data": ["corpora/*.tar.xz", "corpora/*.tsv"],
                  "posjax._configs": ["*.py"]},
    install_requires=[
        "jax>=0.10.0,<0.12",
        "flax>=0.12.1,<0.14",  # 0.12.0 does not import with jax 0.10.2
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.29,<0.13",
        "tensorflow-datasets>=4.9.8,<5",
        "grain>=0.2.12,<0.3",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "ml_dtypes>=0.5,<1",  # bfloat16 tensors of checkpoints (posjax.interop); jax needs >=0.5
        "etils[epath]>=1.9.1,<2",  # epath: checkpoint and TFDS paths
        "safetensors>=0.4,<1",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "sentencepiece>=0.2",  # tests cover it too
                # tests/test_notebooks.py runs notebooks/ in a Jupyter kernel
                "nbformat>=5.9,<6", "nbclient>=0.10,<0.12", "ipykernel>=6.29,<8"],
        # experiments.bench.triton_compile compiles the fused kernels for an H100 without one
        # (tests/test_bench.py skips that test without it; the README's test command installs it)
        "bench": ["triton>=3.4,<4; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "sentencepiece": ["sentencepiece>=0.2"],
        # experiments.word_vectors trains word2vec on the training works; reading word-vector
        # files (model.word_vectors) needs nothing beyond the core package
        "wordvectors": ["gensim>=4.3,<5"],
        # Preparing most TFDS catalog datasets (lm1b, wikitext, ...) runs TensorFlow code once;
        # reading them afterwards (array_record) does not.
        "catalog": ["tensorflow-cpu>=2.16"],
    },
)
