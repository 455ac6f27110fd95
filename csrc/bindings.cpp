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
  // and end with the dtype name (then, on CUDA, the stream); <stem>_workspace_bytes_<device> the
  // same sizes and the dtype name.
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  // ---- coreset: greedy_coreset ----
  m.def("coreset_workspace_bytes_cpu", &coreset_workspace_bytes_cpu, py::arg("n"), py::arg("d"),
        py::arg("k"), py::arg("dtype"));
  m.def("coreset_cpu", &coreset_cpu, py::arg("points"), py::arg("n"), py::arg("d"), py::arg("k"),
        py::arg("start"), py::arg("out"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("dtype"), nogil);
#ifdef PYANOM_WITH_CUDA
  m.def("coreset_workspace_bytes_cuda", &coreset_workspace_bytes_cuda, py::arg("n"), py::arg("d"),
        py::arg("k"), py::arg("dtype"));
  m.def("coreset_cuda", &coreset_cuda, py::arg("points"), py::arg("n"), py::arg("d"), py::arg("k"),
        py::arg("start"), py::arg("out"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("dtype"), py::arg("stream"), nogil);
#endif

  // ---- knn: knn_scores ----
  m.def("knn_workspace_bytes_cpu", &knn_workspace_bytes_cpu, py::arg("q"), py::arg("n"),
        py::arg("d"), py::arg("k"), py::arg("chunk_size"), py::arg("dtype"));
  m.def("knn_cpu", &knn_cpu, py::arg("queries"), py::arg("bank"), py::arg("distances"),
        py::arg("indices"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("q"),
        py::arg("n"), py::arg("d"), py::arg("k"), py::arg("chunk_size"), py::arg("dtype"), nogil);
#ifdef PYANOM_WITH_CUDA
  m.def("knn_workspace_bytes_cuda", &knn_workspace_bytes_cuda, py::arg("q"), py::arg("n"),
        py::arg("d"), py::arg("k"), py::arg("chunk_size"), py::arg("dtype"));
  m.def("knn_cuda", &knn_cuda, py::arg("queries"), py::arg("bank"), py::arg("distances"),
        py::arg("indices"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("q"),
        py::arg("n"), py::arg("d"), py::arg("k"), py::arg("chunk_size"), py::arg("dtype"),
        py::arg("stream"), nogil);
#endif

  // ---- attention: self_attention ----
  m.def("attention_workspace_bytes_cpu", &attention_workspace_bytes_cpu, py::arg("batch"),
        py::arg("channels"), py::arg("positions"), py::arg("full_limit"), py::arg("dtype"));
  m.def("attention_cpu", &attention_cpu, py::arg("x"), py::arg("out"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("batch"), py::arg("channels"), py::arg("positions"),
        py::arg("full_limit"), py::arg("dtype"), nogil);
#ifdef PYANOM_WITH_CUDA
  m.def("attention_cuda", &attention_cuda, py::arg("x"), py::arg("out"), py::arg("batch"),
        py::arg("channels"), py::arg("positions"), py::arg("dtype"), py::arg("stream"), nogil);
#endif

  // ---- channel_attention: channel_self_attention ----
  m.def("channel_attention_cpu", &channel_attention_cpu, py::arg("x"), py::arg("out"),
        py::arg("batch"), py::arg("channels"), py::arg("positions"), py::arg("dtype"), nogil);
#ifdef PYANOM_WITH_CUDA
  m.def("channel_attention_cuda", &channel_attention_cuda, py::arg("x"), py::arg("out"),
        py::arg("batch"), py::arg("channels"), py::arg("positions"), py::arg("dtype"),
        py::arg("stream"), nogil);
#endif

  // ---- concentrated: concentrated_loss (forward and backward) ----
  for (const char* name : {"concentrated_workspace_bytes_cpu", "concentrated_workspace_bytes_cuda"})
    m.def(name, &concentrated_workspace_bytes, py::arg("batch"), py::arg("pixels"), py::arg("dtype"));
  m.def("concentrated_cpu", &concentrated_cpu, py::arg("logits"), py::arg("target"),
        py::arg("batch"), py::arg("pixels"), py::arg("gamma"), py::arg("lam"), py::arg("eps"),
        py::arg("loss"), py::arg("sums"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("dtype"), nogil);
  m.def("concentrated_backward_cpu", &concentrated_backward_cpu, py::arg("grad_loss"),
        py::arg("logits"), py::arg("target"), py::arg("sums"), py::arg("batch"), py::arg("pixels"),
        py::arg("gamma"), py::arg("lam"), py::arg("eps"), py::arg("detach_factor"),
        py::arg("grad_logits"), py::arg("dtype"), nogil);
#ifdef PYANOM_WITH_CUDA
  m.def("concentrated_cuda", &concentrated_cuda, py::arg("logits"), py::arg("target"),
        py::arg("batch"), py::arg("pixels"), py::arg("gamma"), py::arg("lam"), py::arg("eps"),
        py::arg("loss"), py::arg("sums"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("dtype"), py::arg("stream"), nogil);
  m.def("concentrated_backward_cuda", &concentrated_backward_cuda, py::arg("grad_loss"),
        py::arg("logits"), py::arg("target"), py::arg("sums"), py::arg("batch"), py::arg("pixels"),
        py::arg("gamma"), py::arg("lam"), py::arg("eps"), py::arg("detach_factor"),
        py::arg("grad_logits"), py::arg("dtype"), py::arg("stream"), nogil);
#endif
}
