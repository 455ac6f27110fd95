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

  // ---- self_attention ----
  m.def("self_attention_workspace_bytes", &self_attention_workspace_bytes, py::arg("batch"),
        py::arg("channels"), py::arg("positions"), py::arg("full_limit"), py::arg("dtype"),
        "Bytes of workspace self_attention_cpu needs for these sizes (OpenMP threads included).");
  m.def("self_attention_cpu", &self_attention_cpu, py::arg("x"), py::arg("out"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("batch"), py::arg("channels"),
        py::arg("positions"), py::arg("full_limit"), py::arg("dtype"),
        py::call_guard<py::gil_scoped_release>(),
        "softmax(X X^T / sqrt(C)) X over the positions of each contiguous [C, L] map.");
#ifdef PYANOM_WITH_CUDA
  m.def("self_attention_cuda", &self_attention_cuda, py::arg("x"), py::arg("out"),
        py::arg("batch"), py::arg("channels"), py::arg("positions"), py::arg("dtype"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "The same on CUDA buffers, launched on the given stream (cudaStream_t address).");
#endif

  // ---- concentrated_loss ----
}
