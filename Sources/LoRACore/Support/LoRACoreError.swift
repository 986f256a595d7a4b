import Foundation
import LoRAKernels
import SafeTensors

/// Errors of the LoRA operations. Messages name the file, tensor or module at fault.
public enum LoRACoreError: Error, Equatable, Sendable {
    /// adapter_config.json is missing, unreadable, or has a field of the wrong type or value.
    case invalidConfig(file: String, detail: String)
    /// An adapter that cannot be merged exactly (e.g. layer_replication, PiSSA initialisation, DoRA on a transposed layer).
    case unsupportedAdapter(path: String, detail: String)
    /// A module's LoRA tensors are inconsistent (missing half, rank disagreement, zero size, ...).
    case invalidModule(module: String, detail: String)
    /// An adapter module has no base tensor, or shapes disagree.
    case baseMismatch(module: String, detail: String)
    /// A merged value is NaN or infinite where the base was finite.
    case nonFinite(module: String)
    /// Values of a tensor exceed the output dtype's range: rounding would write them as ±Inf.
    case overflow(tensor: String, dtype: String, largest: Float)
    /// A replacement tensor (modules_to_save, base_layer) holds NaN or Inf.
    case nonFiniteReplacement(tensor: String, source: String)
    /// A command-line level problem detected by an operation (paths overlapping, bad options).
    case invalidRequest(String)
    /// Verification found mismatches; the report lists them.
    case verificationFailed(failures: [String])
}

extension LoRACoreError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .invalidConfig(file, detail): return "\(file): \(detail)"
        case let .unsupportedAdapter(path, detail): return "\(path): \(detail)"
        case let .invalidModule(module, detail): return "module '\(module)': \(detail)"
        case let .baseMismatch(module, detail): return "module '\(module)': \(detail)"
        case let .nonFinite(module): return "module '\(module)': merged weights contain NaN or Inf where the base has none"
        case let .overflow(tensor, dtype, largest):
            return "tensor '\(tensor)': values overflow \(dtype) (one is \(largest); the largest finite \(dtype) is \(FloatCodec.largestFinite(TensorData.format(DType(rawValue: dtype) ?? .float16) ?? .f16))) and would be written as Inf; write another --dtype, or give --allow-overflow to accept Inf"
        case let .nonFiniteReplacement(tensor, source):
            return "tensor '\(tensor)': its replacement '\(source)' (modules_to_save / base_layer) contains NaN or Inf"
        case let .invalidRequest(detail): return detail
        case let .verificationFailed(failures):
            return "verification failed for \(failures.count) tensor(s): " + failures.prefix(5).joined(separator: ", ")
                + (failures.count > 5 ? ", ..." : "")
        }
    }
}
