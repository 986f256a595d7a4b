extension Adapter {
    /// Whether this is an image model's LoRA: a diffusers-format file, or a kohya/LyCORIS file whose
    /// keys name an image model's modules (`ImageModelFamily.of(adapter:)`).
    var isImageModelLoRA: Bool { format == .diffusers || ImageModelFamily.of(adapter: self) != nil }

    /// Refuses `command` for an image model's LoRA: its writers know language-model layouts only
    /// (a kohya file would get `lora_te_unet_…` names, a PEFT one `base_model.model.unet.…`), so the
    /// result would not load where the LoRA is used.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming the command and what does work.
    func refuseImageModel(_ command: String) throws {
        guard isImageModelLoRA else { return }
        let family = ImageModelFamily.of(adapter: self).map { " (\($0.name))" } ?? ""
        throw LoRACoreError.unsupportedAdapter(
            path: path, detail: "\(command) of an image model's LoRA\(family) is not implemented yet: its component names would not survive; merge, verify and inspect read it")
    }
}
