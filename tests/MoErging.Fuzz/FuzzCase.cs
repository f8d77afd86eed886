using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MoErging.Formats;
using MoErging.Numerics;

namespace MoErging.Fuzz;

/// <summary>
/// One fuzz case: the two files of a PEFT adapter directory as bytes (null: the file is absent), what was done to
/// them, and optional extra entries. Case i of seed S is a pure function of (S, i), so any case can be rebuilt alone.
/// </summary>
public sealed record FuzzCase(long Index, byte[]? Config, byte[]? Weights, IReadOnlyList<string> Mutations, bool WeightsIsDirectory, bool PickleBeside)
{
    /// <summary>A one-line description for reports.</summary>
    public string Describe() => $"case {Index}: {string.Join("; ", Mutations)}";

    /// <summary>Builds case <paramref name="index"/> of <paramref name="seed"/>: a valid random adapter, then 1-3 mutations.</summary>
    public static FuzzCase Build(int seed, long index)
    {
        var rng = new Random((int)SeededRandom.Derive((uint)seed, (ulong)index));
        var adapter = Adapter.Random(rng);
        var done = new List<string>();
        int count = 1 + rng.Next(3);
        // Most cases break one file, so the loader gets past the other and reaches the checks behind it.
        var focus = (Focus)Math.Min(rng.Next(10) / 4, 2);
        for (int i = 0; i < count; i++)
        {
            done.Add(adapter.Mutate(rng, focus));
        }
        return adapter.ToCase(index, done);
    }

    /// <summary>Which file a case's mutations go to.</summary>
    private enum Focus
    {
        Weights,
        Config,
        Anything,
    }

    /// <summary>A valid adapter in editable form: config as a JSON object, header as ordered (key, value) text pairs, data bytes.</summary>
    private sealed class Adapter
    {
        private static readonly string[] Modules =
        [
            "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj",
        ];

        private static readonly string[] DTypes = ["F32", "F16", "BF16", "I32", "I8", "U8", "F64", "BOOL", "F8_E4M3", "I64", "f32", "", "F7"];

        private readonly JsonObject _config;
        private readonly List<(string Key, string Value)> _header = [];
        private byte[] _data;
        private byte[]? _configBytes;
        private byte[]? _file;
        private ulong? _declaredLength;
        private string _padding = "";
        private bool _noConfig, _noWeights, _weightsIsDirectory, _pickleBeside;

        private Adapter(JsonObject config, byte[] file)
        {
            _config = config;
            ulong length = BinaryPrimitives.ReadUInt64LittleEndian(file);
            using JsonDocument header = JsonDocument.Parse(file.AsMemory(8, (int)length));
            foreach (JsonProperty p in header.RootElement.EnumerateObject())
            {
                _header.Add((JsonSerializer.Serialize(p.Name), p.Value.GetRawText()));
            }
            _data = file[(8 + (int)length)..];
        }

        public static Adapter Random(Random rng)
        {
            string prefix = rng.Next(10) == 0 ? "" : PeftAdapter.ModelPrefix;
            int r = 1 + rng.Next(4);
            var writer = new SafeTensorsWriter();
            var rankPattern = new JsonObject();
            var chosen = Modules.Where(_ => rng.Next(2) == 0).DefaultIfEmpty(Modules[0]).ToList();
            foreach (string module in chosen)
            {
                int rank = r;
                if (rng.Next(4) == 0)
                {
                    rank = 1 + rng.Next(4);
                    rankPattern[module] = rank;
                }
                int dIn = 1 + rng.Next(6), dOut = 1 + rng.Next(6);
                TensorDType[] storage = [TensorDType.F32, TensorDType.F16, TensorDType.BF16];
                writer.Add(prefix + module + ".lora_A.weight", Values(rng, rank * dIn), [rank, dIn], storage[rng.Next(3)]);
                writer.Add(prefix + module + ".lora_B.weight", Values(rng, dOut * rank), [dOut, rank], storage[rng.Next(3)]);
            }
            var config = new JsonObject
            {
                ["peft_type"] = "LORA",
                ["task_type"] = "CAUSAL_LM",
                ["r"] = r,
                ["lora_alpha"] = 1 + rng.Next(32),
                ["lora_dropout"] = 0.05,
                ["bias"] = "none",
                ["use_rslora"] = rng.Next(4) == 0,
                ["fan_in_fan_out"] = false,
                ["rank_pattern"] = rankPattern,
                ["alpha_pattern"] = rng.Next(4) == 0 ? new JsonObject { [chosen[0]] = 2.5 } : new JsonObject(),
            };
            if (rng.Next(4) == 0)
            {
                AddSavedModule(rng, writer, prefix, config);
            }
            switch (rng.Next(3))
            {
                case 0:
                    config["target_modules"] = new JsonArray([.. chosen.Select(m => (JsonNode)m[(m.LastIndexOf('.') + 1)..]).Distinct()]);
                    break;
                case 1:
                    config["target_modules"] = @".*\.(q_proj|v_proj|down_proj)";
                    break;
            }
            using var stream = new MemoryStream();
            writer.WriteTo(stream);
            return new Adapter(config, stream.ToArray());
        }

        /// <summary>
        /// A classification head as real adapters save it: plain keys under task_type SEQ_CLS or modules_to_save, or inside
        /// PEFT's wrapper, sometimes with LoRA factors nested in the wrapper.
        /// </summary>
        private static void AddSavedModule(Random rng, SafeTensorsWriter writer, string prefix, JsonObject config)
        {
            string head = new[] { "classifier", "score", "pre_classifier" }[rng.Next(3)];
            int classes = 1 + rng.Next(4), width = 1 + rng.Next(6);
            switch (rng.Next(3))
            {
                case 0:
                    config["task_type"] = "SEQ_CLS";
                    break;
                case 1:
                    config["modules_to_save"] = new JsonArray(head);
                    break;
            }
            // The wrapper as trained, or save_pretrained's layout with submodules (RoBERTa's classifier.dense), or plain.
            string module = prefix + head + rng.Next(3) switch { 0 => ".modules_to_save.default", 1 => ".dense", _ => "" };
            writer.Add(module + ".weight", Values(rng, classes * width), [classes, width]);
            if (rng.Next(2) == 0)
            {
                writer.Add(module + ".bias", Values(rng, classes), [classes], TensorDType.BF16);
            }
            if (rng.Next(4) == 0)
            {
                writer.Add(prefix + "lm_head.weight", Values(rng, classes * width), [classes, width]); // beside a resized vocabulary
            }
            if (module.Contains(".modules_to_save.", StringComparison.Ordinal) && rng.Next(2) == 0)
            {
                writer.Add(module + ".dense.lora_A.weight", Values(rng, width), [1, width]);
                writer.Add(module + ".dense.lora_B.weight", Values(rng, width), [width, 1]);
            }
        }

        private static float[] Values(Random rng, int count) =>
            [.. Enumerable.Range(0, count).Select(_ => rng.Next(50) == 0 ? float.NaN : (float)(rng.NextDouble() * 4 - 2))];

        /// <summary>Applies one random mutation to the focused file; returns what it did.</summary>
        public string Mutate(Random rng, Focus focus)
        {
            // Structural edits act before the bytes exist; once they are built, only byte edits follow.
            bool built = _file is not null;
            int kind = rng.Next(100);
            return focus switch
            {
                Focus.Weights when !built && kind < 55 => EditHeader(rng),
                Focus.Weights when !built && kind < 65 => EditLength(rng),
                Focus.Weights => EditBytes(rng, onConfig: false),
                Focus.Config when !built && kind < 65 => EditConfig(rng),
                Focus.Config => EditBytes(rng, onConfig: true),
                _ when !built && kind < 25 => EditHeader(rng),
                _ when !built && kind < 45 => EditConfig(rng),
                _ when !built && kind < 65 => EditFiles(rng),
                _ when !built && kind < 70 => EditLength(rng),
                _ => EditBytes(rng, onConfig: rng.Next(3) == 0),
            };
        }

        private string EditLength(Random rng)
        {
            ulong actual = (ulong)Encoding.UTF8.GetByteCount(HeaderText());
            ulong[] choices = [0, 1, 7, actual - 1, actual + 1, actual + 8, 100_000_000, 100_000_001, 1UL << 63, ulong.MaxValue, (ulong)rng.NextInt64()];
            _declaredLength = choices[rng.Next(choices.Length)];
            return $"header length field set to {_declaredLength}";
        }

        private string EditHeader(Random rng)
        {
            int tensorCount = _header.Count(e => e.Key != "\"__metadata__\"");
            int at = _header.Count == 0 ? -1 : rng.Next(_header.Count);
            (string key, string value) = at < 0 ? ("\"x\"", "{}") : _header[at];
            switch (rng.Next(14))
            {
                case 12:
                    _padding = new string(' ', 1 + rng.Next(16));
                    return $"header padded with {_padding.Length} spaces";
                case 13:
                    if (at >= 0 && ParseObject(value) is JsonObject entry && entry["shape"] is JsonArray dims2)
                    {
                        string swapped = $"[{string.Join(",", dims2.Reverse().Select(d => d?.ToJsonString()))}]";
                        return Relayout(rng, SetField(at, "shape", swapped, $"shape of {key} reversed to {swapped}"));
                    }
                    return "no shape to reverse";
                case 0:
                    string dtype = DTypes[rng.Next(DTypes.Length)];
                    return Relayout(rng, SetField(at, "dtype", rng.Next(8) == 0 ? "7" : JsonSerializer.Serialize(dtype), $"dtype of {key} set to '{dtype}'"));
                case 1:
                    long[] dims = [0, 1, 2, 3, -1, 1L << 31, 1L << 62, long.MaxValue, 5, 64];
                    List<string> shape = [.. Enumerable.Range(0, rng.Next(4)).Select(_ => dims[rng.Next(dims.Length)].ToString(CultureInfo.InvariantCulture))];
                    if (rng.Next(2) == 0 && ParseObject(value)?["shape"] is JsonArray current && current.Count > 0)
                    {
                        // One dimension changed, the others kept: near misses reach the rank and size checks.
                        shape = [.. current.Select(d => d?.ToJsonString() ?? "null")];
                        shape[rng.Next(shape.Count)] = dims[rng.Next(dims.Length)].ToString(CultureInfo.InvariantCulture);
                    }
                    string text = rng.Next(10) == 0 ? "[2.5]" : rng.Next(10) == 0 ? "[\"2\"]" : rng.Next(10) == 0 ? "[-0]" : $"[{string.Join(",", shape)}]";
                    return Relayout(rng, SetField(at, "shape", text, $"shape of {key} set to {text}"));
                case 2:
                    long end = _data.Length;
                    long[] points = [0, 1, 2, 4, end - 1, end, end + 1, end + 4096, -1, long.MaxValue, 1L << 40];
                    long b = points[rng.Next(points.Length)], e = rng.Next(3) == 0 ? b : points[rng.Next(points.Length)];
                    string offsets = rng.Next(10) == 0 ? $"[{b}]" : rng.Next(10) == 0 ? $"[{b},{e},{e}]" : $"[{b},{e}]";
                    return SetField(at, "data_offsets", offsets, $"data_offsets of {key} set to {offsets}");
                case 3:
                    if (at >= 0)
                    {
                        _header.Insert(rng.Next(_header.Count + 1), (key, value));
                    }
                    return $"duplicated key {key}";
                case 4:
                    string[] renames = [".lora_B.weight", ".lora_A.weight", ".lora_magnitude_vector", ".lora_embedding_A", ".lora_B.bias", ".lora_A.default.weight", "", ".weight"];
                    string stem = key.Trim('"');
                    int cut = stem.IndexOf(".lora_", StringComparison.Ordinal);
                    string renamed = (cut >= 0 ? stem[..cut] : stem) + renames[rng.Next(renames.Length)];
                    if (at >= 0)
                    {
                        _header[at] = (rng.Next(8) == 0 ? "\"\\ud800\"" : JsonSerializer.Serialize(renamed), value);
                    }
                    return $"renamed {key} to '{renamed}'";
                case 5:
                    if (at >= 0)
                    {
                        _header.RemoveAt(at);
                    }
                    return $"removed entry {key}";
                case 6:
                    _header.Insert(rng.Next(_header.Count + 1), ("\"extra.lora_A.weight\"", $"{{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[{_data.Length},{_data.Length + 4}]}}"));
                    _data = [.. _data, 0, 0, 128, 63];
                    return $"added an entry ({tensorCount} before)";
                case 7:
                    string[] metadata = ["{\"format\":1}", "{\"format\":null}", "[\"pt\"]", "\"pt\"", "{\"a\":{\"b\":\"c\"}}", "{\"format\":\"pt\",\"format\":\"np\"}", "{}"];
                    string m = metadata[rng.Next(metadata.Length)];
                    _header.RemoveAll(x => x.Key == "\"__metadata__\"");
                    _header.Insert(rng.Next(_header.Count + 1), ("\"__metadata__\"", m));
                    return $"__metadata__ set to {m}";
                case 8:
                    if (at >= 0)
                    {
                        _header[at] = (key, new string('[', 200) + new string(']', 200));
                    }
                    return $"value of {key} nested 200 deep";
                case 9:
                    if (at >= 0)
                    {
                        string[] unknowns = ["\"extra\":1", "\"dtype\":\"F32\"", "\"shape\":[1]"];
                        string field = unknowns[rng.Next(unknowns.Length)];
                        _header[at] = (key, value.TrimEnd().TrimEnd('}') + (value.Trim() == "{}" ? "" : ",") + field + "}");
                        return $"added field {field} to {key}";
                    }
                    return "no entry to add a field to";
                case 10:
                    _header.Reverse();
                    return "reversed header order";
                default:
                    if (at >= 0)
                    {
                        _header[at] = (key, "null");
                    }
                    return $"value of {key} set to null";
            }
        }

        /// <summary>Sets one field of a tensor entry (appended if absent, so an entry may end up with it twice).</summary>
        private string SetField(int at, string field, string valueText, string description)
        {
            if (at < 0)
            {
                return "no entry to edit";
            }
            var (key, value) = _header[at];
            if (ParseObject(value) is not JsonObject obj)
            {
                return $"entry {key} not editable";
            }
            obj.Remove(field);
            string body = obj.ToJsonString();
            _header[at] = (key, body.Length > 2 ? body[..^1] + $",\"{field}\":{valueText}}}" : $"{{\"{field}\":{valueText}}}");
            return description;
        }

        /// <summary>
        /// Half the time after a dtype or shape edit, lays the data buffer out again to fit every entry (offsets in order,
        /// random bytes), so the file stays valid safetensors and the adapter checks behind the format are reached.
        /// </summary>
        private string Relayout(Random rng, string description)
        {
            if (rng.Next(2) == 0)
            {
                return description;
            }
            var entries = new List<(int At, JsonObject Entry, long Bytes)>();
            long total = 0;
            for (int i = 0; i < _header.Count; i++)
            {
                if (_header[i].Key == "\"__metadata__\"")
                {
                    continue;
                }
                if (ParseObject(_header[i].Value) is not JsonObject entry
                    || entry["dtype"] is not JsonValue dtypeNode || !dtypeNode.TryGetValue(out string? name) || !TensorDTypes.TryParse(name, out TensorDType dtype)
                    || entry["shape"] is not JsonArray shape)
                {
                    return description; // not a layout this can fit
                }
                long elements = 1;
                foreach (JsonNode? d in shape)
                {
                    if (d is not JsonValue v || !v.TryGetValue(out long dim) || dim < 0 || dim > 1 << 16 || (elements *= dim) > 1 << 16)
                    {
                        return description;
                    }
                }
                entries.Add((i, entry, elements * TensorDTypes.SizeOf(dtype)));
                total += elements * TensorDTypes.SizeOf(dtype);
            }
            long offset = 0;
            foreach (var (at, entry, bytes) in entries)
            {
                entry["data_offsets"] = new JsonArray(offset, offset + bytes);
                _header[at] = (_header[at].Key, entry.ToJsonString());
                offset += bytes;
            }
            _data = new byte[total];
            rng.NextBytes(_data);
            return description + " (data laid out again to fit)";
        }

        /// <summary>An entry as a JSON object, or null when earlier edits left it unparseable, not an object, or with duplicate fields.</summary>
        private static JsonObject? ParseObject(string value)
        {
            try
            {
                var obj = JsonNode.Parse(value) as JsonObject;
                _ = obj?.Count; // JsonObject reads its properties lazily; duplicates surface here
                return obj;
            }
            catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
            {
                return null;
            }
        }

        private string EditConfig(Random rng)
        {
            string[] fields = ["r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern", "peft_type", "use_dora",
                "lora_bias", "bias", "layers_to_transform", "layers_pattern", "exclude_modules", "fan_in_fan_out", "layer_replication",
                "task_type", "modules_to_save", "init_lora_weights", "arrow_config", "base_model_name_or_path", "use_bdlora"];
            string field = fields[rng.Next(fields.Length)];
            string[] values =
            [
                "0", "-1", "1", "4", "2147483648", "1e30", "1e400", "2.5", "-0", "\"4\"", "null", "true", "false", "[]", "{}",
                "\"(\"", "\"[\"", "\".*\"", "\"all-linear\"", "[\"q_proj\"]", "[1,2]", "[-1]", "{\"q_proj\":0}", "{\"(\":2}",
                "{\"q_proj\":\"x\"}", "{\"v_proj\":1e39}", "\"IA3\"", "\"all\"", "\"LORA\"", new string('[', 20) + "1" + new string(']', 20),
                "\"SEQ_CLS\"", "[\"classifier\"]", "[\"score\",\"lm_head\"]", "\"pissa\"", "\"pissa_niter_4\"", "\"eva\"", "\"olora\"", "\"loftq\"",
                "{\"top_k\":0}", "{\"top_k\":2,\"router_temperature\":0.5,\"use_gks\":true}", "{\"router_temperature\":-1}", "{\"top_k\":\"2\"}",
                "\"gpt2\"", "\"/local/model\"", "\"a/b/c\"",
            ];
            string text = values[rng.Next(values.Length)];
            _config[field] = JsonNode.Parse(text);
            return $"config {field} set to {text}";
        }

        private string EditFiles(Random rng)
        {
            switch (rng.Next(5))
            {
                case 0:
                    _noConfig = true;
                    return "config removed";
                case 1:
                    _noWeights = true;
                    return "weights removed";
                case 2:
                    _weightsIsDirectory = true;
                    return "weights file replaced by a directory";
                case 3:
                    _pickleBeside = true;
                    _noWeights = rng.Next(2) == 0;
                    return $"adapter_model.bin added{(_noWeights ? ", safetensors removed" : "")}";
                default:
                    _config["unknown_field"] = 1; // unknown fields are ignored by PEFT and by the loader
                    return "unknown config field added";
            }
        }

        private string EditBytes(Random rng, bool onConfig)
        {
            Build();
            byte[] target = onConfig ? _configBytes! : _file!;
            string where = onConfig ? "config" : "weights";
            switch (rng.Next(6))
            {
                case 5:
                    Set(onConfig, [.. Encoding.UTF8.GetPreamble(), .. target]);
                    return $"byte-order mark put before the {where}";
                case 0:
                case 1:
                    int flips = 1 + rng.Next(8);
                    for (int i = 0; i < flips && target.Length > 0; i++)
                    {
                        // Bias towards the first bytes: the length field and the header.
                        int at = rng.Next(2) == 0 ? rng.Next(Math.Min(target.Length, 128)) : rng.Next(target.Length);
                        target[at] ^= (byte)(1 + rng.Next(255));
                    }
                    return $"{flips} bytes flipped in the {where}";
                case 2:
                    int keep = target.Length == 0 ? 0 : rng.Next(target.Length);
                    Set(onConfig, target[..keep]);
                    return $"{where} truncated to {keep} bytes";
                case 3:
                    var extra = new byte[1 + rng.Next(16)];
                    rng.NextBytes(extra);
                    Set(onConfig, [.. target, .. extra]);
                    return $"{extra.Length} bytes appended to the {where}";
                default:
                    if (target.Length < 2)
                    {
                        return $"{where} too short to splice";
                    }
                    int start = rng.Next(target.Length), length = 1 + rng.Next(Math.Min(32, target.Length - start));
                    int to = rng.Next(target.Length);
                    Set(onConfig, [.. target[..to], .. target.AsSpan(start, length), .. target[to..]]);
                    return $"{length} bytes of the {where} copied from {start} to {to}";
            }
        }

        private void Set(bool onConfig, byte[] bytes)
        {
            if (onConfig)
            {
                _configBytes = bytes;
            }
            else
            {
                _file = bytes;
            }
        }

        private string HeaderText() => "{" + string.Join(",", _header.Select(e => $"{e.Key}:{e.Value}")) + "}" + _padding;

        private void Build()
        {
            if (_file is not null)
            {
                return;
            }
            byte[] header = Encoding.UTF8.GetBytes(HeaderText());
            var file = new byte[8 + header.Length + _data.Length];
            BinaryPrimitives.WriteUInt64LittleEndian(file, _declaredLength ?? (ulong)header.Length);
            header.CopyTo(file, 8);
            _data.CopyTo(file, 8 + header.Length);
            _file = file;
            _configBytes = Encoding.UTF8.GetBytes(_config.ToJsonString());
        }

        public FuzzCase ToCase(long index, List<string> mutations)
        {
            Build();
            return new FuzzCase(index, _noConfig ? null : _configBytes, _noWeights ? null : _file, mutations, _weightsIsDirectory, _pickleBeside);
        }
    }
}
