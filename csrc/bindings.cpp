// pybind11 module pyanom._C: one thin function per kernel and device.
// Buffers cross as raw addresses checked by pyanom.ops; no libtorch is linked.
#include <omp.h>
#include <exception>
#include <new>
#include <stdexcept>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "attention.h"
#include "channel_attention.h"
#include "common.h"
#include "concentrated.h"
#include "coreset.h"
#include "cpu_isa.h"
#include "knn.h"

namespace py = pybind11;
using namespace pyanom;

namespace {

// Binds fn as `name` with the argument annotations `extra` and records the names of its
// arguments, in order, in `table`.
template <typename Fn, typename... Extra>
void bind(py::module_& m, py::dict& table, const char* name, Fn fn,
          std::initializer_list<const char*> names, const Extra&... extra) {
  m.def(name, fn, extra...);
  py::list list;
  for (const char* arg : names) list.append(arg);
  table[name] = py::tuple(list);
}

}  // namespace

// Compiled once per CPU instruction-set level (CMakeLists.txt): PYANOM_MODULE is _C (the lowest
// level, with the CUDA kernels and the CPU check), _C_avx2 or _C_avx512; pyanom._build picks one.
PYBIND11_MODULE(PYANOM_MODULE, m) {
  m.doc() = "pyanom compiled kernels (CPU with OpenMP; CUDA when built with it)";

  // Each level's module turns its own C++ exceptions into Python ones. pybind11's shared
  // translator lives in whichever module loaded first, and with a C++ runtime linked in
  // statically (the wheel's) another module's std::invalid_argument is a different type to it.
  py::register_local_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory");
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("build_info", [] {
    py::dict info;
    info["openmp_threads"] = omp_get_max_threads();
    info["cpu_isa"] = std::string(PYANOM_CPU_ISA);
#ifdef PYANOM_WITH_CUDA
    info["cuda"] = true;
    info["cuda_architectures"] = std::string(PYANOM_CUDA_ARCHS);
    info["cuda_runtime_version"] = cuda_runtime_version();
#else
    info["cuda"] = false;
    info["cuda_architectures"] = std::string();
    info["cuda_runtime_version"] = 0;
#endif
    return info;
  });
  // The kernels' OpenMP threads for the calling thread. pyanom.ops sets torch's intra-op count
  // before each CPU call: a wheel bundles its own OpenMP runtime, which torch.set_num_threads
  // does not reach (a source build shares torch's, where this changes nothing).
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n > 0 ? n : 1); }, py::arg("n"));
#ifdef PYANOM_CPU_LEVELS
  m.attr("cpu_levels_built") = std::string(PYANOM_CPU_LEVELS);
  m.def("cpu_supported_levels", &cpu_supported_levels,
        "ISA levels this CPU runs, lowest first: generic, then avx2 and avx512 where cpuid has them.");
#endif
#ifdef PYANOM_WITH_CUDA
  m.def("cuda_device_count", &cuda_device_count,
        "Number of usable CUDA devices (0 when no driver or GPU is present).");
#endif

  // One block per op, named by its stem (pyanom/ops/<stem>.py launches them through
  // pyanom.ops._backend.launch): <stem>_cpu and <stem>_cuda take the buffers' addresses and sizes
  // listed in csrc/<stem>.h and end with the dtype name (then, on CUDA, the stream);
  // <stem>_workspace_bytes_<device> the sizes and the dtype name. kernel_args maps each name to
  // its arguments' names, which pyanom.ops checks every launch against.
  py::dict kernel_args;
  m.attr("kernel_args") = kernel_args;
#define PYANOM_PYARG(type, name) py::arg(#name),
#define PYANOM_NAME(type, name) #name,
#define PYANOM_BIND_SIZES(name, fn, LIST) \
  bind(m, kernel_args, name, &fn, {LIST(PYANOM_NAME) "dtype"}, LIST(PYANOM_PYARG) py::arg("dtype"))
#define PYANOM_BIND_CPU(fn, LIST) \
  bind(m, kernel_args, #fn, &fn, {LIST(PYANOM_NAME) "dtype"}, LIST(PYANOM_PYARG) py::arg("dtype"), nogil)
#define PYANOM_BIND_CUDA(fn, LIST)                                                           \
  bind(m, kernel_args, #fn, &fn, {LIST(PYANOM_NAME) "dtype", "stream"}, LIST(PYANOM_PYARG) \
       py::arg("dtype"), py::arg("stream"), nogil)
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  // ---- coreset: greedy_coreset ----
  PYANOM_BIND_SIZES("coreset_workspace_bytes_cpu", coreset_workspace_bytes_cpu, PYANOM_CORESET_SIZES);
  PYANOM_BIND_CPU(coreset_cpu, PYANOM_CORESET_ARGS);
#ifdef PYANOM_WITH_CUDA
  PYANOM_BIND_SIZES("coreset_workspace_bytes_cuda", coreset_workspace_bytes_cuda, PYANOM_CORESET_SIZES);
  PYANOM_BIND_CUDA(coreset_cuda, PYANOM_CORESET_ARGS);
#endif

  // ---- knn: knn_scores ----
  PYANOM_BIND_SIZES("knn_workspace_bytes_cpu", knn_workspace_bytes_cpu, PYANOM_KNN_SIZES);
  PYANOM_BIND_CPU(knn_cpu, PYANOM_KNN_ARGS);
#ifdef PYANOM_WITH_CUDA
  PYANOM_BIND_SIZES("knn_workspace_bytes_cuda", knn_workspace_bytes_cuda, PYANOM_KNN_SIZES);
  PYANOM_BIND_CUDA(knn_cuda, PYANOM_KNN_ARGS);
#endif

  // ---- attention: self_attention ----
  PYANOM_BIND_SIZES("attention_workspace_bytes_cpu", attention_workspace_bytes_cpu, PYANOM_ATTENTION_SIZES);
  PYANOM_BIND_CPU(attention_cpu, PYANOM_ATTENTION_ARGS);
#ifdef PYANOM_WITH_CUDA
  PYANOM_BIND_CUDA(attention_cuda, PYANOM_ATTENTION_CUDA_ARGS);
#endif

  // ---- channel_attention: channel_self_attention ----
  PYANOM_BIND_CPU(channel_attention_cpu, PYANOM_CHANNEL_ATTENTION_ARGS);
#ifdef PYANOM_WITH_CUDA
  PYANOM_BIND_CUDA(channel_attention_cuda, PYANOM_CHANNEL_ATTENTION_ARGS);
#endif

  // ---- concentrated: concentrated_loss (forward and backward) ----
  PYANOM_BIND_SIZES("concentrated_workspace_bytes_cpu", concentrated_workspace_bytes, PYANOM_CONCENTRATED_SIZES);
  PYANOM_BIND_CPU(concentrated_cpu, PYANOM_CONCENTRATED_ARGS);
  PYANOM_BIND_CPU(concentrated_backward_cpu, PYANOM_CONCENTRATED_BACKWARD_ARGS);
#ifdef PYANOM_WITH_CUDA
  PYANOM_BIND_SIZES("concentrated_workspace_bytes_cuda", concentrated_workspace_bytes, PYANOM_CONCENTRATED_SIZES);
  PYANOM_BIND_CUDA(concentrated_cuda, PYANOM_CONCENTRATED_ARGS);
  PYANOM_BIND_CUDA(concentrated_backward_cuda, PYANOM_CONCENTRATED_BACKWARD_ARGS);
#endif
}
