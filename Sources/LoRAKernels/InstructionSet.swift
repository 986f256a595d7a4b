import CKernels
import Foundation

/// The kernels' instruction sets. The merge kernel gives the same bits on all of them.
public enum InstructionSet: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// Portable C, one element at a time (any CPU, any architecture).
    case scalar = 0
    /// x86-64 with AVX2, FMA and F16C.
    case avx2 = 1
    /// x86-64 with AVX-512 F/BW/VL/DQ.
    case avx512 = 2

    /// The spelling `LORA_TOOL_ISA` takes.
    public var description: String {
        switch self {
        case .scalar: return "scalar"
        case .avx2: return "avx2"
        case .avx512: return "avx512"
        }
    }

    /// The best instruction set of this CPU.
    public static let best = InstructionSet(rawValue: lora_best_isa()) ?? .scalar

    /// The instruction sets this CPU runs, scalar first.
    public static var available: [InstructionSet] { allCases.filter { $0.rawValue <= best.rawValue } }

    /// Parses a `LORA_TOOL_ISA` value.
    /// - Throws: `KernelsError.unknownInstructionSet`, or `.unsupportedInstructionSet` when this CPU lacks it.
    public init(environmentValue value: String) throws {
        guard let isa = InstructionSet.allCases.first(where: { $0.description == value }) else {
            throw KernelsError.unknownInstructionSet(value)
        }
        guard isa.rawValue <= InstructionSet.best.rawValue else {
            throw KernelsError.unsupportedInstructionSet(value, available: InstructionSet.available.map(\.description))
        }
        self = isa
    }
}

/// The process-wide choice of instruction set: `LORA_TOOL_ISA` (read once) or the best this CPU has.
public enum Kernels {
    /// The environment variable that forces the kernels' instruction set.
    public static let environmentVariable = "LORA_TOOL_ISA"

    private static let fromEnvironment: Result<InstructionSet, KernelsError> = {
        guard let value = ProcessInfo.processInfo.environment[environmentVariable] else { return .success(.best) }
        return Result { try InstructionSet(environmentValue: value) }.mapError { $0 as! KernelsError }
    }()

    private static let lock = NSLock()
    nonisolated(unsafe) private static var override: InstructionSet?

    /// The instruction set the kernels use in this process.
    /// - Throws: `KernelsError` when `LORA_TOOL_ISA` is unknown or names one this CPU lacks.
    public static func instructionSet() throws -> InstructionSet {
        lock.lock()
        let forced = override
        lock.unlock()
        if let forced { return forced }
        return try fromEnvironment.get()
    }

    /// `isa`, or when nil the process-wide choice (the best this CPU has when `LORA_TOOL_ISA` is invalid):
    /// the instruction set of a kernel call that takes an optional one.
    static func resolved(_ isa: InstructionSet?) -> InstructionSet {
        isa ?? (try? instructionSet()) ?? .best
    }

    /// Replaces the process-wide choice (nil: back to `LORA_TOOL_ISA` or the best); for tests, which
    /// cannot change the environment once it has been read.
    static func setInstructionSet(_ isa: InstructionSet?) {
        lock.lock()
        override = isa
        lock.unlock()
    }
}
