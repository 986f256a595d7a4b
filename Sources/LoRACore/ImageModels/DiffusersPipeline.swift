import Foundation
import SafeTensors

/// A diffusers pipeline folder, as `DiffusionPipeline.save_pretrained` writes it: `model_index.json`
/// (the pipeline class and each component's library and class), one folder per component, and
/// nothing deeper.
///
/// ```
/// model_index.json
/// unet/config.json, unet/diffusion_pytorch_model.safetensors      (weights: a component merge may change)
/// text_encoder/config.json, text_encoder/model.safetensors        (weights)
/// vae/config.json, vae/diffusion_pytorch_model.safetensors        (weights; no LoRA targets it)
/// tokenizer/…, scheduler/scheduler_config.json                    (no weights: copied)
/// ```
/// Hidden entries (`.gitattributes`, a cache's `.lock`) are not part of the pipeline, as they are
/// not side files of a model directory (`SideFiles`).
public struct DiffusersPipeline: Sendable {
    /// One folder of the pipeline.
    public struct Folder: Sendable {
        public var name: String
        /// Its regular files, sorted.
        public var files: [String]
        /// Whether it holds safetensors weights (a model component).
        public var hasWeights: Bool
    }

    public let path: String
    /// Regular files at the top (`model_index.json`, a README), sorted.
    public let files: [String]
    /// Folders, sorted by name.
    public let folders: [Folder]
    /// `model_index.json`'s `_class_name` (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `FluxPipeline`).
    public let className: String?

    /// Names of the folders holding weights, sorted.
    public var weightComponents: [String] { folders.filter(\.hasWeights).map(\.name) }

    /// Whether `path` is a directory holding `model_index.json`.
    public static func isPipeline(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            && FileManager.default.fileExists(atPath: path + "/model_index.json")
    }

    /// Lists the pipeline.
    /// - Throws: `SafeTensorsError.unsupportedInput` naming the entry for anything that is not a
    ///   regular file (through links) or a folder of them, a folder inside a component folder, or a
    ///   component whose only weights are pickle files; `LoRACoreError.invalidConfig` for a
    ///   `model_index.json` that is not a JSON object.
    public init(path: String) throws {
        self.path = path
        var files: [String] = []
        var folders: [Folder] = []
        for entry in try Self.entries(path) {
            let full = path + "/" + entry
            switch try Self.kind(full) {
            case .file:
                files.append(entry)
            case .directory:
                var inner: [String] = []
                for f in try Self.entries(full) {
                    guard try Self.kind(full + "/" + f) == .file else {
                        throw SafeTensorsError.unsupportedInput(path: full + "/" + f, detail: "a folder inside a pipeline component; a diffusers pipeline is one level deep")
                    }
                    inner.append(f)
                }
                let weights = inner.contains { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json") }
                // Hub snapshots may hold variants (`diffusion_pytorch_model.fp16.safetensors` beside the
                // default one): merging one would leave the other unmerged under a name diffusers loads.
                let variants = Set(inner.compactMap(Self.weightVariant))
                if variants.count > 1 {
                    let shown = inner.filter { Self.weightVariant($0) != nil }.joined(separator: ", ")
                    throw SafeTensorsError.unsupportedInput(
                        path: full, detail: "holds several weight variants (\(shown)); merging one would leave the others unmerged: use a copy of the pipeline with one variant")
                }
                if !weights, let pickle = inner.first(where: { Checkpoint.pickleExtensions.contains(($0 as NSString).pathExtension) }) {
                    throw SafeTensorsError.unsupportedInput(
                        path: full + "/" + pickle, detail: "a pickle file, which can run code when loaded; convert the \(entry) component to safetensors first")
                }
                folders.append(Folder(name: entry, files: inner, hasWeights: weights))
            }
        }
        self.files = files
        self.folders = folders
        let index = try SideFiles.readJSON(path + "/model_index.json")
        guard let index, index.objectMembers != nil else {
            throw LoRACoreError.invalidConfig(file: path + "/model_index.json", detail: "not a JSON object")
        }
        className = index["_class_name"]?.stringValue
    }

    /// The variant a weights file name carries (`fp16` for `diffusion_pytorch_model.fp16.safetensors`
    /// or `model.fp16-00001-of-00002.safetensors`; "" for the default), nil for other files.
    static func weightVariant(_ file: String) -> String? {
        let stem: Substring
        if file.hasSuffix(".safetensors.index.json") {
            stem = file.dropLast(".safetensors.index.json".count)
        } else if file.hasSuffix(".safetensors") {
            stem = file.dropLast(".safetensors".count)
        } else {
            return nil
        }
        // Shards: `NAME-00001-of-00002`.
        let name = stem.range(of: #"-\d{5}-of-\d{5}$"#, options: .regularExpression).map { stem[..<$0.lowerBound] } ?? stem
        guard let dot = name.firstIndex(of: ".") else { return "" }
        return String(name[name.index(after: dot)...])
    }

    private enum Kind { case file, directory }

    /// Regular file or directory (through links); anything else refused by name.
    private static func kind(_ path: String) throws -> Kind {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw SafeTensorsError.unsupportedInput(path: path, detail: "cannot be read (a dangling link?)")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        default: throw SafeTensorsError.unsupportedInput(path: path, detail: "not a regular file or a folder")
        }
    }

    /// Non-hidden entries of a directory, sorted by UTF-8 bytes.
    private static func entries(_ path: String) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted(by: utf8Precedes)
        } catch {
            throw SafeTensorsError.unsupportedInput(path: path, detail: "cannot list directory: \(error.localizedDescription)")
        }
    }
}
