#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One tensor's header entry.
///
/// `dataOffsets` are `[begin, end)` byte offsets relative to the start of the data section (file
/// offset 8 + header length). Shapes are row-major; `[]` is a scalar with one element.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public var dataOffsets: (begin: UInt64, end: UInt64)

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: (begin: UInt64, end: UInt64) = (0, 0)) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    public static func == (lhs: TensorInfo, rhs: TensorInfo) -> Bool {
        lhs.name == rhs.name && lhs.dtype == rhs.dtype && lhs.shape == rhs.shape
            && lhs.dataOffsets.begin == rhs.dataOffsets.begin && lhs.dataOffsets.end == rhs.dataOffsets.end
    }

    /// Number of elements (1 for a scalar), or nil when it overflows.
    public var elementCount: Int? { TensorInfo.elementCount(shape) }

    /// Bytes the data occupies: `dataOffsets.end - dataOffsets.begin`.
    public var byteCount: Int { Int(dataOffsets.end - dataOffsets.begin) }

    /// Product of `shape`, or nil on overflow or a negative dimension.
    public static func elementCount(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let (p, o) = n.multipliedReportingOverflow(by: d)
            if o { return nil }
            n = p
        }
        return n
    }

    /// Bytes needed for `shape` elements of `dtype`, or nil on overflow or a sub-byte remainder.
    public static func byteCount(dtype: DType, shape: [Int]) -> Int? {
        guard let n = elementCount(shape) else { return nil }
        let (bits, o) = n.multipliedReportingOverflow(by: dtype.bitSize)
        guard !o, bits % 8 == 0 else { return nil }
        return bits / 8
    }
}

/// Byte order used everywhere names are sorted or compared: raw UTF-8, as the reference does.
/// Swift's `String <` compares by Unicode canonical equivalence, which is not what the format means.
/// Native strings hold contiguous UTF-8, compared with `memcmp` (sorting 500,000 names with the
/// generic element-by-element comparison took seconds).
@inlinable
public func utf8Precedes(_ a: String, _ b: String) -> Bool {
    let fast = a.utf8.withContiguousStorageIfAvailable { x in
        b.utf8.withContiguousStorageIfAvailable { y -> Bool in
            let common = min(x.count, y.count)
            if common > 0 {
                let order = memcmp(x.baseAddress!, y.baseAddress!, common)
                if order != 0 { return order < 0 }
            }
            return x.count < y.count
        }
    }
    if let result = fast ?? nil { return result }
    return a.utf8.lexicographicallyPrecedes(b.utf8)
}
