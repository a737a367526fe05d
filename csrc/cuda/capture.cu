// Whether a stream is being captured into a CUDA graph: the table (csrc/table.cpp) must then
// neither allocate nor copy, and raises instead of re-uploading changed addresses.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "flatmin/op_args.h"

namespace flatmin {
namespace cuda {

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status);
  if (err != cudaSuccess) throw std::runtime_error(std::string("flatmin_kernels: ") + cudaGetErrorString(err));
  return status != cudaStreamCaptureStatusNone;
}

}  // namespace cuda
}  // namespace flatmin
