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
    packages=setuptools.find_packages(include=["posjax", "posjax.*"]),
    package_data={"posjax.data": ["corpora/*.tar.xz", "corpora/*.tsv"]},
    install_requires=[
        "jax>=0.10.0,<0.12",
        "flax>=0.12.0,<0.14",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.29,<0.13",
        "tensorflow-datasets>=4.9.8,<5",
        "grain>=0.2.12,<0.3",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "chex>=0.1.90,<0.2",
        "numpy>=1.26,<3",
        "safetensors>=0.4,<1",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "sentencepiece>=0.2",  # tests cover it too
                # tests/test_notebooks.py runs notebooks/ in a Jupyter kernel
                "nbformat>=5.9,<6", "nbclient>=0.10,<0.12", "ipykernel>=6.29,<8",
                # tests/test_bench.py compiles the fused kernels for an H100 without one
                "triton>=3.4,<4; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "sentencepiece": ["sentencepiece>=0.2"],
        # Preparing most TFDS catalog datasets (lm1b, wikitext, ...) runs TensorFlow code once;
        # reading them afterwards (array_record) does not.
        "catalog": ["tensorflow-cpu>=2.16"],
    },
)
