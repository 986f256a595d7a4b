import Foundation

/// Errors from numeric kernels.
public enum KernelsError: Error, Equatable, Sendable {
    /// A dtype the kernels cannot compute in (only F32, F16, BF16 are).
    case unsupportedDType(String)
    /// A dimension does not fit the 32-bit integers BLAS/LAPACK take.
    case dimensionTooLarge(Int)
    /// LAPACK reported failure (`info` as returned by the routine).
    case lapackFailed(routine: String, info: Int32)
    /// `LORA_TOOL_ISA` names no instruction set of the kernels.
    case unknownInstructionSet(String)
    /// `LORA_TOOL_ISA` names an instruction set this CPU lacks (with those it has).
    case unsupportedInstructionSet(String, available: [String])
}

extension KernelsError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .unsupportedDType(d): return "cannot compute in dtype \(d); only F32, F16 and BF16 are supported"
        case let .dimensionTooLarge(n): return "dimension \(n) is too large for BLAS (over 2^31 - 1)"
        case let .lapackFailed(routine, info): return "\(routine) failed with info = \(info)"
        case let .unknownInstructionSet(value):
            return "LORA_TOOL_ISA=\(value) is not an instruction set of the kernels (scalar, avx2 or avx512)"
        case let .unsupportedInstructionSet(value, available):
            return "LORA_TOOL_ISA=\(value): this CPU does not support \(value) (it supports \(available.joined(separator: ", ")))"
        }
    }
}
