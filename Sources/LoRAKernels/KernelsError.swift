import Foundation

/// Errors from numeric kernels.
public enum KernelsError: Error, Equatable, Sendable {
    /// A dtype the kernels cannot compute in (only F32, F16, BF16 are).
    case unsupportedDType(String)
    /// A dimension does not fit the 32-bit integers BLAS/LAPACK take.
    case dimensionTooLarge(Int)
    /// LAPACK reported failure (`info` as returned by the routine).
    case lapackFailed(routine: String, info: Int32)
}

extension KernelsError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .unsupportedDType(d): return "cannot compute in dtype \(d); only F32, F16 and BF16 are supported"
        case let .dimensionTooLarge(n): return "dimension \(n) is too large for BLAS (over 2^31 - 1)"
        case let .lapackFailed(routine, info): return "\(routine) failed with info = \(info)"
        }
    }
}
