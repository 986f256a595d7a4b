import Foundation

/// Everything that can be wrong with a GGUF file.
///
/// Messages are one lowercase line that names the file and, where there is one, the key or tensor.
public enum GGUFError: Error, Equatable, Sendable {
    /// The file does not start with the magic `GGUF`.
    case notGGUF(file: String)
    /// The magic is right but the version reads as a byte-swapped 2 or 3: a big-endian file.
    case bigEndian(file: String)
    /// A version other than 2 or 3 (v1 had 32-bit counts and is not read).
    case unsupportedVersion(file: String, version: UInt32)
    /// The file ends inside `what`, which needs bytes up to `needed`.
    case truncated(file: String, what: String, needed: UInt64, fileSize: Int)
    /// A count or length that cannot fit in what is left of the file (or overflows).
    case countTooLarge(file: String, what: String, count: UInt64, remaining: Int)
    /// A key, string value or tensor name that is not valid UTF-8.
    case notUTF8(file: String, what: String)
    /// A metadata value type number GGUF does not define.
    case unknownValueType(file: String, key: String, type: UInt32)
    /// A value that its type does not allow (a bool other than 0 or 1).
    case invalidValue(file: String, key: String, detail: String)
    /// Arrays nested deeper than `GGUFFile.maximumNesting`.
    case nestingTooDeep(file: String, key: String)
    /// The same metadata key twice.
    case duplicateKey(file: String, key: String)
    /// `general.alignment` is not a UINT32 power of two.
    case invalidAlignment(file: String, detail: String)
    /// A tensor info is malformed: dimension count, a dimension, its size.
    case invalidTensor(file: String, tensor: String, detail: String)
    /// A ggml type number this reader does not know.
    case unknownGGMLType(file: String, tensor: String, type: UInt32)
    /// A tensor's data offset is unaligned, outside the file, or overlaps another tensor.
    case invalidOffset(file: String, tensor: String, detail: String)
    /// The same tensor name twice.
    case duplicateTensor(file: String, tensor: String)
    /// No tensor of that name.
    case tensorNotFound(file: String, tensor: String)
    /// A ggml type that `GGMLDequantizer` or `GGMLQuantizer` (`operation`: "dequantizing" or
    /// "quantizing") does not implement; `tensor` is empty when no name was given.
    case unsupportedType(type: GGMLType, operation: String, tensor: String)
    /// A row range outside the tensor.
    case invalidRowRange(file: String, tensor: String, rows: Range<Int>, rowCount: Int)
    /// A NaN or infinity among the values to quantize (ggml's reference has no defined codes for them).
    case nonFiniteValue(type: GGMLType, tensor: String, index: Int, value: Float)
    /// `general.architecture` names a model family whose tensor names and layout lora-tool does not
    /// map to transformers' (`GGUFTensorNameMap.architectures` lists those it does).
    case unsupportedArchitecture(file: String, architecture: String)
    /// A metadata key the operation needs is missing or has a non-integer/non-string value.
    case missingKey(file: String, key: String)
    /// A tensor whose shape does not fit what the operation needs (heads that do not divide its rows,
    /// a row length that is not a whole number of the output type's blocks).
    case incompatibleTensor(file: String, tensor: String, detail: String)
    /// A tensor that llama.cpp's converter stored transformed (`transformation`, e.g. Gemma's norm
    /// weights as 1 + w) and that an operation would change: its stored values are not the
    /// transformers values an adapter was trained against, and the inverse is not exact.
    case transformedTensor(file: String, tensor: String, transformation: String)
    /// A shard of a split GGUF model (`X-00001-of-0000N.gguf`, `GGUFSplit`) that is missing, or whose
    /// `split.*` keys or tensors do not agree with the first shard's.
    case invalidSplit(file: String, detail: String)
}

extension GGUFError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .notGGUF(file):
            return "\(file): not a GGUF file (no GGUF magic)"
        case let .bigEndian(file):
            return "\(file): big-endian GGUF files are not supported"
        case let .unsupportedVersion(file, version):
            return "\(file): GGUF version \(version) is not supported (only 2 and 3)"
        case let .truncated(file, what, needed, size):
            return "\(file): truncated: \(what) needs \(needed) bytes but the file is \(size) bytes"
        case let .countTooLarge(file, what, count, remaining):
            return "\(file): \(what) \(count) cannot fit in the \(remaining) bytes left in the file (truncated or corrupt)"
        case let .notUTF8(file, what):
            return "\(file): \(what) is not valid UTF-8"
        case let .unknownValueType(file, key, type):
            return "\(file): key '\(key)': unknown metadata value type \(type)"
        case let .invalidValue(file, key, detail):
            return "\(file): key '\(key)': \(detail)"
        case let .nestingTooDeep(file, key):
            return "\(file): key '\(key)': arrays nested deeper than \(GGUFFile.maximumNesting) levels"
        case let .duplicateKey(file, key):
            return "\(file): metadata key '\(key)' appears twice"
        case let .invalidAlignment(file, detail):
            return "\(file): invalid general.alignment: \(detail)"
        case let .invalidTensor(file, tensor, detail):
            return "\(file): tensor '\(tensor)': \(detail)"
        case let .unknownGGMLType(file, tensor, type):
            return "\(file): tensor '\(tensor)': unknown ggml type \(type)"
        case let .invalidOffset(file, tensor, detail):
            return "\(file): tensor '\(tensor)': invalid data offset: \(detail)"
        case let .duplicateTensor(file, tensor):
            return "\(file): tensor '\(tensor)' appears twice"
        case let .tensorNotFound(file, tensor):
            return "\(file): no tensor named '\(tensor)'"
        case let .unsupportedType(type, operation, tensor):
            let subject = tensor.isEmpty ? "" : "tensor '\(tensor)': "
            let supported = operation == "quantizing" ? GGMLQuantizer.supportedTypes : GGMLDequantizer.supportedTypes
            return "\(subject)\(operation) \(type.name) is not supported (only \(supported.map(\.name).joined(separator: ", ")))"
        case let .invalidRowRange(file, tensor, rows, rowCount):
            return "\(file): tensor '\(tensor)': rows \(rows.lowerBound)..<\(rows.upperBound) outside its \(rowCount) rows"
        case let .nonFiniteValue(type, tensor, index, value):
            let subject = tensor.isEmpty ? "" : "tensor '\(tensor)': "
            return "\(subject)cannot quantize \(value) (element \(index)) to \(type.name)"
        case let .unsupportedArchitecture(file, architecture):
            return "\(file): GGUF architecture '\(architecture)' is not supported for merging (supported: \(GGUFTensorNameMap.architectures.joined(separator: ", ")))"
        case let .missingKey(file, key):
            return "\(file): metadata key '\(key)' is missing or not of the expected type"
        case let .incompatibleTensor(file, tensor, detail):
            return "\(file): tensor '\(tensor)': \(detail)"
        case let .transformedTensor(file, tensor, transformation):
            return "\(file): tensor '\(tensor)' is stored as \(transformation), not as the transformers weight an adapter changes: merging into it is refused"
        case let .invalidSplit(file, detail):
            return "\(file): split GGUF model: \(detail)"
        }
    }
}
