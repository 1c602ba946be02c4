# The CUDA server build's settings, for the scripts: sourced, never run.
# scripts/images.sh builds the CUDA image with them and scripts/check-gpu.sh
# builds the GPU tests with them, so the tests exercise the image's kernels.
# shellcheck disable=SC2034 # each script uses some of these

# The GPU generation compiled for: candle's kernels become PTX for
# compute_80 (Ampere, A100), which the driver JIT-compiles for newer GPUs
# (Hopper: H100, H200) on first load; the few kernels compiled to machine
# code (candle's MoE and fast-MMQ library) are sm_80 only and are not used
# by the server (it forces the dequantise-then-multiply path).
CUDA_IMAGE_COMPUTE_CAP=80
# Where the CUDA image keeps the CUDA libraries (its LD_LIBRARY_PATH).
CUDA_IMAGE_LIB_DIR=/usr/local/cuda/lib64
