using System.Text.Json.Serialization;

namespace MoErging.Routing;

/// <summary>
/// The JSON of the name lists that routers and routing sets keep in safetensors metadata. Source-generated, so
/// that reading and writing them needs neither reflection nor run-time code (the NativeAOT library has neither).
/// </summary>
[JsonSerializable(typeof(string[]))]
internal sealed partial class NameListJson : JsonSerializerContext;
