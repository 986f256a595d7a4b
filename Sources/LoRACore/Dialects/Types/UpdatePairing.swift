import SafeTensors

/// Groups an adapter file's `<module>.<role>` tensors by module and reads each module with the
/// registered type its roles belong to (PEFT and LyCORIS files share the role names).
enum UpdatePairing {
    /// - Parameters:
    ///   - split: a tensor name → (module, role), or nil for a tensor that is not a role of a
    ///     registered type (left to the caller, in `rest`).
    ///   - origin: the module's scale rule, or nil when the config does not target it (`untargeted`).
    /// - Returns: modules sorted by name, the untargeted modules, and the other tensors' names.
    /// - Throws: `LoRACoreError.invalidModule` from the types (shapes, refused roles, mixed types).
    static func pair(_ ckpt: Checkpoint, split: (String) -> (module: String, role: String)?, origin: (String) throws -> UpdateOrigin?) throws
        -> (modules: [AdapterModule], untargeted: [String], rest: [String])
    {
        var groups: [String: [String: TensorInfo]] = [:]
        var rest: [String] = []
        for name in ckpt.names {
            guard let (module, role) = split(name), AdapterUpdateTypes.isRole(role) else {
                rest.append(name)
                continue
            }
            groups[module, default: [:]][role] = ckpt.info(name)!
        }
        var modules: [AdapterModule] = []
        var untargeted: [String] = []
        for module in groups.keys.sorted(by: utf8Precedes) {
            let tensors = groups[module]!
            guard let type = try AdapterUpdateTypes.owner(of: module, roles: tensors.mapValues(\.name)) else { continue }
            guard let origin = try origin(module) else {
                untargeted.append(module)
                continue
            }
            modules.append(try type.module(module, tensors: tensors, origin: origin))
        }
        return (modules, untargeted, rest)
    }
}
