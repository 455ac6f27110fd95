// Shared helpers for the kernels: argument checks and dtype dispatch.
// Buffers arrive as raw addresses that pyanom.ops has already checked (device,
// dtype, contiguity); the kernels re-check sizes and raise ValueError on misuse.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyanom {

// Each op declares the arguments of its entry points once, in csrc/<op>.h, as a list of
// X(type, name): the declarations below it (PYANOM_PARAMS), the definitions, the binding's
// argument names and the table _C.kernel_args (bindings.cpp) all expand it, and pyanom.ops passes
// the arguments by these names (pyanom.ops._backend.launch checks them against the table).
// Every entry point ends with the dtype name (then, on CUDA, the stream), which stay outside.
#define PYANOM_PARAM(type, name) type name,
#define PYANOM_PARAMS(LIST) LIST(PYANOM_PARAM)

// Raised as ValueError on the Python side (pybind11 maps std::invalid_argument).
#define PYANOM_CHECK(cond, msg)                                  \
  do {                                                           \
    if (!(cond)) throw std::invalid_argument(std::string(msg));  \
  } while (0)

// x rounded up to a multiple of m.
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

#ifdef PYANOM_WITH_CUDA
// Device queries (csrc/cuda/device.cu) that do not fail on a machine without a GPU or driver.
int cuda_device_count();
int cuda_runtime_version();
#endif

enum class DType { Float32, Float64 };

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float64") return DType::Float64;
  throw std::invalid_argument("unsupported dtype '" + name + "': expected float32 or float64");
}

// Calls fn(T{}) with T = float or double according to the dtype name.
template <typename Fn>
inline auto dispatch_float(const std::string& dtype, Fn&& fn) {
  if (parse_dtype(dtype) == DType::Float32) return fn(float{});
  return fn(double{});
}

}  // namespace pyanom
