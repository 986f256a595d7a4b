import SafeTensors

/// The pieces of a SentencePiece `tokenizer.model` (a protobuf `ModelProto`), as
/// `SentencePieceProcessor` reports them to llama.cpp's converter: each piece's text, score and type.
///
/// Wire format read: `ModelProto` field 1 (`pieces`, repeated message `SentencePiece`: field 1
/// `piece` string, field 2 `score` float (fixed32), field 3 `type` enum, NORMAL when absent);
/// every other field of either message is skipped by its wire type (varint, fixed64,
/// length-delimited, fixed32). Groups, truncated fields, lengths past the end and pieces that are
/// not UTF-8 are errors naming the file.
struct SentencePieceModel: Sendable {
    /// `sentencepiece_model.proto`'s `SentencePiece.Type`.
    enum PieceType: Int32, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    struct Piece: Sendable, Equatable {
        var text: String
        var score: Float
        var type: PieceType
    }

    let pieces: [Piece]

    /// Files larger than this are refused (real models' tokenizer.model files are a few MB).
    static let sizeLimit = 64 << 20

    /// - Throws: `LoRACoreError.invalidConfig` naming `path` for a malformed file.
    init(path: String) throws {
        let bytes = try RegularFile.readAll(path, limit: SentencePieceModel.sizeLimit)
        do {
            var reader = ProtobufReader(bytes: bytes[...])
            var pieces: [Piece] = []
            while let (field, wire) = try reader.nextKey() {
                if field == 1 && wire == 2 {
                    pieces.append(try SentencePieceModel.piece(try reader.lengthDelimited()))
                } else {
                    try reader.skip(wire: wire)
                }
            }
            self.pieces = pieces
        } catch let error as ProtobufReader.Malformed {
            throw LoRACoreError.invalidConfig(file: path, detail: "not a SentencePiece model: \(error.detail)")
        }
    }

    private static func piece(_ bytes: ArraySlice<UInt8>) throws -> Piece {
        var reader = ProtobufReader(bytes: bytes)
        var piece = Piece(text: "", score: 0, type: .normal)
        while let (field, wire) = try reader.nextKey() {
            switch (field, wire) {
            case (1, 2):
                let raw = try reader.lengthDelimited()
                guard let text = String(validating: raw, as: UTF8.self) else {
                    throw ProtobufReader.Malformed(detail: "a piece is not UTF-8")
                }
                piece.text = text
            case (2, 5):
                piece.score = Float(bitPattern: try reader.fixed32())
            case (3, 0):
                let raw = try reader.varint()
                guard let t = PieceType(rawValue: Int32(truncatingIfNeeded: raw)) else {
                    throw ProtobufReader.Malformed(detail: "piece '\(piece.text)' has unknown type \(raw)")
                }
                piece.type = t
            default:
                try reader.skip(wire: wire)
            }
        }
        return piece
    }
}

/// A minimal protobuf wire-format reader over a byte slice.
struct ProtobufReader {
    struct Malformed: Error {
        var detail: String
    }

    private var bytes: ArraySlice<UInt8>

    init(bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
    }

    /// The next field number and wire type, nil at the end.
    mutating func nextKey() throws -> (field: UInt64, wire: UInt8)? {
        guard !bytes.isEmpty else { return nil }
        let key = try varint()
        return (key >> 3, UInt8(key & 7))
    }

    mutating func varint() throws -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 64, by: 7) {
            guard let b = bytes.popFirst() else { throw Malformed(detail: "truncated varint") }
            value |= UInt64(b & 0x7f) << UInt64(shift)
            if b < 0x80 { return value }
        }
        throw Malformed(detail: "varint longer than 10 bytes")
    }

    mutating func fixed32() throws -> UInt32 {
        guard bytes.count >= 4 else { throw Malformed(detail: "truncated fixed32") }
        let b = Array(bytes.prefix(4))
        bytes = bytes.dropFirst(4)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    mutating func lengthDelimited() throws -> ArraySlice<UInt8> {
        let n = try varint()
        guard n <= UInt64(bytes.count) else { throw Malformed(detail: "a field of \(n) bytes runs past the end") }
        let field = bytes.prefix(Int(n))
        bytes = bytes.dropFirst(Int(n))
        return field
    }

    mutating func skip(wire: UInt8) throws {
        switch wire {
        case 0: _ = try varint()
        case 1:
            guard bytes.count >= 8 else { throw Malformed(detail: "truncated fixed64") }
            bytes = bytes.dropFirst(8)
        case 2: _ = try lengthDelimited()
        case 5: _ = try fixed32()
        default: throw Malformed(detail: "wire type \(wire) (groups are not used by SentencePiece)")
        }
    }
}
