import ArgumentParser
import CMalloc
import GGUF
import Foundation
import LoRACore
import LoRAGraph
import LoRAKernels
import SafeTensors

/// `lora-tool`: inspect, merge and verify LoRA checkpoints.
@main
struct LoraTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora-tool",
        abstract: "Inspect, merge and verify LoRA adapters and safetensors checkpoints.",
        discussion: """
            Reads safetensors only (pickle files are refused). Streams: inputs are memory-mapped and \
            outputs are written tensor by tensor into a temporary name that is renamed into place \
            when complete. Exit status: 0 on success, 1 on any error or failed verification, 64 on \
            a usage error.
            """,
        version: "0.1.0",
        subcommands: [Inspect.self, Merge.self, Verify.self, Extract.self, Convert.self, Resize.self, Combine.self, Dequantize.self, Run.self])

    static func main() {
        relaunchWithMatchingBLASCore()
        InterruptCleanup.install()
        // Tensors are processed one after another in buffers of similar sizes: keep freed buffers in
        // the heap for reuse instead of returning them to the kernel, which would fault and zero
        // fresh pages for every tensor (seconds of system time on a 1B model).
        _ = mallopt(M_MMAP_THRESHOLD, 1 << 30)
        _ = mallopt(M_TRIM_THRESHOLD, 1 << 30)
        var command: ParsableCommand
        do { command = try parseAsRoot() } catch { exit(withError: error) }
        defer { printNotes() }
        do {
            // A bad LORA_TOOL_ISA fails every command up front, before any output exists.
            _ = try Kernels.instructionSet()
            try command.run()
        } catch let error where isLibraryError(error) {
            printNotes()
            // An interrupted run is torn down by InterruptCleanup; its half-done work's errors are noise.
            while InterruptCleanup.interrupted { pause() }
            FileHandle.standardError.write(Data("error: \(describe(error))\n".utf8))
            if case .unsafeOutput = error as? SafeTensorsError { Foundation.exit(64) }
            Foundation.exit(1)
        } catch {
            // ArgumentParser's own errors: help, usage (64), ExitCode.
            exit(withError: error)
        }
    }
}

/// OpenBLAS (the SVD of extract and resize) picks its kernels from the CPU when the library loads,
/// and 0.3.21 misdetects some CPUs as Prescott (SSE3). For those two commands, when
/// `OPENBLAS_CORETYPE` is unset and the loaded core lacks the CPU's AVX2 or AVX-512, the process
/// runs itself again once with the matching core (Haswell / SkylakeX): the variable is only read
/// when the library loads. A correctly detected core costs nothing (no re-exec).
func relaunchWithMatchingBLASCore() {
    let arguments = CommandLine.arguments
    guard arguments.count > 1, ["extract", "resize", "combine"].contains(arguments[1]),
          getenv("OPENBLAS_CORETYPE") == nil, let core = BLASCore.replacementCoreType else { return }
    setenv("OPENBLAS_CORETYPE", core, 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // execv returned: it failed; go on with OpenBLAS's own choice.
    unsetenv("OPENBLAS_CORETYPE")
}

/// Notes the libraries collected (a recovered output, a side file linked from elsewhere…), on stderr.
func printNotes() {
    for note in AtomicOutput.takeNotes() {
        Render.diagnostic("note: " + note)
    }
}

/// Errors of lora-tool's libraries, reported as one `error:` line with exit status 1.
func isLibraryError(_ error: Error) -> Bool {
    error is LoRACoreError || error is SafeTensorsError || error is GGUFError || error is GraphError || error is KernelsError
}

/// One line naming what is wrong: the library errors' descriptions, with control characters from
/// file names, tensor names or metadata escaped so a file cannot drive the terminal.
func describe(_ error: Error) -> String {
    Render.escaped((error as? LocalizedError)?.errorDescription ?? String(describing: error))
}
