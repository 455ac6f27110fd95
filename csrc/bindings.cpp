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

  // ---- knn_scores ----
  m.def("knn_scores_workspace_bytes", &knn_scores_workspace_bytes, py::arg("q"), py::arg("n"),
        py::arg("d"), py::arg("k"), py::arg("dtype"), py::arg("chunk_size"));
  m.def("knn_scores_cpu", &knn_scores_cpu, py::arg("queries"), py::arg("bank"),
        py::arg("distances"), py::arg("indices"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("q"), py::arg("n"), py::arg("d"), py::arg("k"),
        py::arg("dtype"), py::arg("chunk_size"), py::call_guard<py::gil_scoped_release>());
#ifdef PYANOM_WITH_CUDA
  m.def("knn_scores_cuda_workspace_bytes", &knn_scores_cuda_workspace_bytes, py::arg("q"),
        py::arg("n"), py::arg("d"), py::arg("k"), py::arg("dtype"), py::arg("chunk_size"));
  m.def("knn_scores_cuda", &knn_scores_cuda, py::arg("queries"), py::arg("bank"),
        py::arg("distances"), py::arg("indices"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("q"), py::arg("n"), py::arg("d"), py::arg("k"),
        py::arg("dtype"), py::arg("chunk_size"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
#endif

  // ---- self_attention ----

  // ---- concentrated_loss ----
}
