// pybind11 module pyanom._C: one thin function per kernel and device.
// Buffers cross as raw addresses checked by pyanom.ops; no libtorch is linked.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "channel_self_attention.h"
#include "common.h"
#include "cpu_isa.h"
#include "kernels.h"

namespace py = pybind11;
using namespace pyanom;

// Compiled once per CPU instruction-set level (CMakeLists.txt): PYANOM_MODULE is _C (the lowest
// level, with the CUDA kernels and the CPU check), _C_avx2 or _C_avx512; pyanom._build picks one.
PYBIND11_MODULE(PYANOM_MODULE, m) {
  m.doc() = "pyanom compiled kernels (CPU with OpenMP; CUDA when built with it)";

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

  // ---- channel_self_attention ----
  m.def("channel_self_attention_cpu", &channel_self_attention_cpu, py::arg("x"), py::arg("out"),
        py::arg("batch"), py::arg("channels"), py::arg("positions"), py::arg("dtype"),
        py::call_guard<py::gil_scoped_release>(),
        "Per channel of each contiguous [C, L] map: softmax_j(x_i x_j) weighted mean of x_j.");
#ifdef PYANOM_WITH_CUDA
  m.def("channel_self_attention_cuda", &channel_self_attention_cuda, py::arg("x"), py::arg("out"),
        py::arg("batch"), py::arg("channels"), py::arg("positions"), py::arg("dtype"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "The same on CUDA buffers, launched on the given stream (cudaStream_t address).");
#endif

  // ---- concentrated_loss ----
  m.def("concentrated_loss_workspace_bytes", &concentrated_loss_workspace_bytes, py::arg("batch"),
        py::arg("pixels"), "Bytes of float64 workspace the forward pass needs.");
  m.def("concentrated_loss_forward_cpu", &concentrated_loss_forward_cpu, py::arg("logits"),
        py::arg("target"), py::arg("batch"), py::arg("pixels"), py::arg("gamma"), py::arg("lam"),
        py::arg("eps"), py::arg("loss"), py::arg("sums"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def("concentrated_loss_backward_cpu", &concentrated_loss_backward_cpu, py::arg("grad_loss"),
        py::arg("logits"), py::arg("target"), py::arg("sums"), py::arg("batch"), py::arg("pixels"),
        py::arg("gamma"), py::arg("lam"), py::arg("eps"), py::arg("detach_factor"),
        py::arg("grad_logits"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
#ifdef PYANOM_WITH_CUDA
  m.def("concentrated_loss_forward_cuda", &concentrated_loss_forward_cuda, py::arg("logits"),
        py::arg("target"), py::arg("batch"), py::arg("pixels"), py::arg("gamma"), py::arg("lam"),
        py::arg("eps"), py::arg("loss"), py::arg("sums"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
  m.def("concentrated_loss_backward_cuda", &concentrated_loss_backward_cuda, py::arg("grad_loss"),
        py::arg("logits"), py::arg("target"), py::arg("sums"), py::arg("batch"), py::arg("pixels"),
        py::arg("gamma"), py::arg("lam"), py::arg("eps"), py::arg("detach_factor"),
        py::arg("grad_logits"), py::arg("dtype"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>());
#endif
}
