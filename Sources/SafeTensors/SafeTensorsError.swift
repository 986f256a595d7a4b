import Foundation

/// Everything that can be wrong with a safetensors file, an index, or a write.
///
/// Messages are lowercase sentences that name the file and, where there is one, the tensor.
public enum SafeTensorsError: Error, Equatable, Sendable {
    /// The file is shorter than the 8-byte header length prefix.
    case headerTooSmall(file: String, size: Int)
    /// The header length prefix exceeds the 100,000,000-byte cap of the reference implementation.
    case headerTooLarge(file: String, length: UInt64)
    /// The header length points past the end of the file.
    case invalidHeaderLength(file: String, length: UInt64, fileSize: Int)
    /// The header bytes are not valid UTF-8.
    case headerNotUTF8(file: String)
    /// The header is not valid JSON, or has the wrong structure; `detail` says where.
    case invalidHeader(file: String, detail: String)
    /// A tensor entry is malformed (missing field, wrong type, unknown dtype, ...).
    case invalidTensorEntry(file: String, tensor: String, detail: String)
    /// Offsets are reversed, leave a hole, overlap, or do not start at 0.
    case invalidOffset(file: String, tensor: String, detail: String)
    /// The byte size of a tensor does not equal its element count times its dtype size.
    case tensorSizeMismatch(file: String, tensor: String, expected: UInt64, actual: UInt64)
    /// Element count times dtype size overflows 64 bits.
    case validationOverflow(file: String, tensor: String)
    /// A sub-byte dtype tensor whose bit size is not a multiple of 8.
    case misalignedSlice(file: String, tensor: String)
    /// The data section does not end exactly at the end of the file.
    case incompleteBuffer(file: String, dataEnd: UInt64, fileSize: Int)
    /// A tensor is not present in a file or checkpoint.
    case tensorNotFound(tensor: String, in: String)
    /// An index json and its shards disagree, or the index is malformed.
    case invalidIndex(file: String, detail: String)
    /// A path is not a safetensors file, index, or directory holding them.
    case unsupportedInput(path: String, detail: String)
    /// A system call failed on a file.
    case io(path: String, operation: String, errno: Int32)
    /// A request to write something the format cannot represent.
    case invalidWrite(path: String, detail: String)
    /// An output path no command may write (blank, `.`, `..`, `/`, home, an ancestor of the working
    /// directory): a usage error.
    case unsafeOutput(path: String, detail: String)
    /// The output exists and may not be replaced (no `--force`, or not an output lora-tool wrote).
    case outputExists(path: String, detail: String)
    /// Another process holds the output's staging directory: it is writing the same output.
    case outputBusy(path: String, staging: String)
    /// The output appeared or changed while the command ran; the finished output was kept at `kept`.
    case outputAppeared(path: String, kept: String)
    /// A system call failed on the output side (the disk, the staging directory), not on an input.
    case outputIO(path: String, operation: String, errno: Int32)
}

extension SafeTensorsError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .headerTooSmall(file, size):
            return "\(file): file is \(size) bytes, shorter than the 8-byte header length"
        case let .headerTooLarge(file, length):
            return "\(file): header length \(length) exceeds the limit of 100000000 bytes"
        case let .invalidHeaderLength(file, length, size):
            return "\(file): header length \(length) runs past the end of the \(size)-byte file"
        case let .headerNotUTF8(file):
            return "\(file): header is not valid UTF-8"
        case let .invalidHeader(file, detail):
            return "\(file): invalid header: \(detail)"
        case let .invalidTensorEntry(file, tensor, detail):
            return "\(file): tensor '\(tensor)': \(detail)"
        case let .invalidOffset(file, tensor, detail):
            return "\(file): tensor '\(tensor)': invalid data_offsets: \(detail)"
        case let .tensorSizeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)': data is \(actual) bytes but shape × dtype needs \(expected)"
        case let .validationOverflow(file, tensor):
            return "\(file): tensor '\(tensor)': shape × dtype size overflows"
        case let .misalignedSlice(file, tensor):
            return "\(file): tensor '\(tensor)': sub-byte tensor does not fill a whole number of bytes"
        case let .incompleteBuffer(file, end, size):
            return "\(file): tensor data ends at byte \(end) but the file is \(size) bytes"
        case let .tensorNotFound(tensor, place):
            return "\(place): no tensor named '\(tensor)'"
        case let .invalidIndex(file, detail):
            return "\(file): \(detail)"
        case let .unsupportedInput(path, detail):
            return "\(path): \(detail)"
        case let .io(path, operation, code):
            return "\(path): \(operation) failed: \(String(cString: strerror(code)))"
        case let .invalidWrite(path, detail):
            return "\(path): \(detail)"
        case let .unsafeOutput(path, detail):
            return "output \(path): \(detail)"
        case let .outputExists(path, detail):
            return "output \(path): \(detail)"
        case let .outputBusy(path, staging):
            return "output \(path): another lora-tool process is writing it (it holds \(staging)); wait for it or choose another output"
        case let .outputAppeared(path, kept):
            return "output \(path): it appeared or changed while lora-tool was writing, so it was left as it is; the finished output is at \(kept)"
        case let .outputIO(path, operation, code):
            let why: String
            switch code {
            case ENOENT: why = "the output's staging directory is gone (removed by another program?)"
            case ENOSPC: why = "no space or no free inodes left on the output's file system"
            case EDQUOT: why = "disk quota exceeded on the output's file system"
            default: why = String(cString: strerror(code))
            }
            return "output \(path): \(operation) failed: \(why)"
        }
    }
}
