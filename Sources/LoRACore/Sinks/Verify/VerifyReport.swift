/// How `verify` checks merged tensors.
public enum VerifyMode: String, Sendable, CaseIterable {
    /// Every element of the merged file against merge's own recomputation (see `ExactChecker`).
    case exact
    /// Merged modules on random probe vectors in fp64 (side-branch equivalence, see `MergeChecker`);
    /// untouched and replaced tensors byte for byte.
    case probes
    /// Both: every element, then the probe check of every merged module.
    case both

    var exact: Bool { self != .probes }
    var probes: Bool { self != .exact }
}

/// The outcome of checking a merged checkpoint against base + side branch.
public struct VerifyReport: Sendable {
    /// The element-by-element comparison of one tensor with merge's recomputation of it.
    public struct ExactResult: Sendable {
        /// One stored element and the value merge computes for it.
        public struct Element: Sendable {
            /// Row-major index into the tensor.
            public var index: Int
            /// Row and column for tensors of two or more dimensions (the column runs over all the
            /// trailing dimensions).
            public var row: Int?
            public var column: Int?
            public var got: Double
            public var expected: Double
            /// Distance in ulps (see `ExactResult.maxUlps`).
            public var ulps: Double
        }

        /// Largest distance in ulps. 16-bit values and tensors that must be identical: between the
        /// stored bit patterns. Merged f32 tensors: |got − expected| / ulp(M), with M the tensor's
        /// largest magnitude over the starting and the merged values (normwise).
        public var maxUlps: Double
        /// The bound: 0 (copied and replaced tensors), 1 (merged bf16/f16) or 4 (merged f32, normwise).
        public var allowedUlps: Double
        /// Whether the distance is measured in ulps of the tensor's largest magnitude.
        public var normwise: Bool
        /// Elements over the bound.
        public var overBound: Int
        /// The element furthest from its expected value (first such index), when any differs.
        public var worst: Element?
    }

    /// The probe comparison of one merged module (mode `probes` or `both`).
    public struct ProbeResult: Sendable {
        /// max |y_merged − y_side| over probes and outputs.
        public var maxAbsError: Double
        /// Normwise error: max |y_merged − y_side| / max (|W|·|x| + |w·s|·|B|·|A|·|x|), the quantity
        /// one rounding bounds.
        public var relativeError: Double
        /// ‖y_merged − y_side‖₂ / ‖y_side‖₂ over all probes.
        public var errorRelativeToOutput: Double
        public var tolerance: Double
    }

    /// One checked tensor.
    public struct Entry: Sendable {
        public enum Kind: String, Sendable { case merged, bias, replaced, copied, missing, extra }
        public var tensor: String
        /// Module family (`q_proj`), or the tensor name's last module segment.
        public var family: String
        public var kind: Kind
        /// nil in `--mode probes`, and for missing or extra tensors.
        public var exact: ExactResult?
        /// nil in `--mode exact`, and for tensors the probe check does not cover.
        public var probes: ProbeResult?
        /// What failed, one sentence per check; empty when the tensor passed.
        public var failures: [String]

        public var passed: Bool { failures.isEmpty }
        /// The failures in one line.
        public var detail: String? { failures.isEmpty ? nil : failures.joined(separator: "; ") }

        /// How far over its bounds the tensor is (> 1 fails), for sorting worst first.
        var severity: Double {
            var s = 0.0
            if let e = exact { s = max(s, e.allowedUlps > 0 ? e.maxUlps / e.allowedUlps : (e.maxUlps > 0 ? .infinity : 0)) }
            if let p = probes { s = max(s, p.tolerance > 0 ? p.relativeError / p.tolerance : p.relativeError) }
            return s
        }
    }

    /// A side file, or a safetensors file's `__metadata__`, compared with what merge writes.
    public struct FileCheck: Sendable {
        public enum Status: String, Sendable {
            /// Identical to the base's (byte for byte, or config.json equal up to the keys merge changes).
            case equal
            case differs
            case missing
            case extra
        }

        /// The file name, or `NAME.safetensors __metadata__`.
        public var file: String
        public var status: Status
        /// Keys of config.json that differ from the base's as merge documents (e.g. `torch_dtype`).
        public var expectedChanges: [String] = []
        public var detail: String?

        public var passed: Bool { status == .equal }
    }

    /// Entries worst first (failures, then by how close they are to their bounds), ties by name.
    public var entries: [Entry]
    /// Side files and metadata, by file name.
    public var files: [FileCheck]
    /// Why side files were not compared (the base is a single file), or nil.
    public var sideFilesSkipped: String?
    /// Why some merged tensors had no probe check in a probes mode (GGUF block types), or nil.
    public var probesSkipped: String?
    public var mode: VerifyMode
    public var probes: Int
    /// The probe seed used (give it to `--seed` to reproduce the probes).
    public var seed: UInt64
    /// With `verify --part`: the part checked (its files' tensors; part 0 also the tensor list,
    /// side files and metadata).
    public var part: PartSelection?

    public var failures: [Entry] { entries.filter { !$0.passed } }
    public var fileFailures: [FileCheck] { files.filter { !$0.passed } }
    public var passed: Bool { failures.isEmpty && fileFailures.isEmpty }

    init(entries: [Entry], files: [FileCheck], sideFilesSkipped: String?, mode: VerifyMode, probes: Int, seed: UInt64) {
        self.entries = entries.sorted { l, r in
            if l.passed != r.passed { return !l.passed }
            let ls = l.severity, rs = r.severity
            if ls != rs { return ls > rs }
            return l.tensor.utf8.lexicographicallyPrecedes(r.tensor.utf8)
        }
        self.files = files.sorted { $0.file.utf8.lexicographicallyPrecedes($1.file.utf8) }
        self.sideFilesSkipped = sideFilesSkipped
        self.mode = mode
        self.probes = probes
        self.seed = seed
    }
}
