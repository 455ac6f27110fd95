// pybind11 module pyanom._C: one thin function per kernel and device.
// Buffers cross as raw addresses checked by pyanom.ops; no libtorch is linked.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "common.h"
#include "kernels.h"

namespace py = pybind11;
using namespace pyanom;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyanom compiled kernels (CPU with OpenMP; CUDA when built with it)";

  m.def("build_info", [] {
    py::dict info;
    info["openmp_threads"] = omp_get_max_threads();
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
#ifdef PYANOM_WITH_CUDA
  m.def("cuda_device_count", &cuda_device_count,
        "Number of usable CUDA devices (0 when no driver or GPU is present).");
#endif

  // ---- greedy_coreset ----
  m.def("greedy_coreset_workspace_bytes", &greedy_coreset_workspace_bytes, py::arg("n"),
        py::arg("d"), py::arg("k"), py::arg("dtype"));
  m.def("greedy_coreset_cpu", &greedy_coreset_cpu, py::arg("points"), py::arg("n"), py::arg("d"),
        py::arg("k"), py::arg("start"), py::arg("out"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
#ifdef PYANOM_WITH_CUDA
  m.def("greedy_coreset_cuda_workspace_bytes", &greedy_coreset_cuda_workspace_bytes, py::arg("n"),
        py::arg("d"), py::arg("k"), py::arg("dtype"));
  m.def("greedy_coreset_cuda", &greedy_coreset_cuda, py::arg("points"), py::arg("n"), py::arg("d"),
        py::arg("k"), py::arg("start"), py::arg("out"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
#endif

  // ---- knn_scores ----

  // ---- self_attention ----

  // ---- concentrated_loss ----
}
