namespace MoErging.Interop;

/// <summary>
/// The opaque handles the C API hands out. A handle is not an address: it packs a slot index (low 32 bits,
/// plus one so that no handle is NULL) and the slot's generation (high 32 bits), which changes when the
/// handle is freed. Lookups therefore never dereference caller-supplied values, and NULL, freed, forged
/// and wrong-kind handles are all reported instead of crashing. Lookups take no lock; adding and
/// removing do.
/// </summary>
internal static class Handles
{
    private static readonly Lock Gate = new();
    private static readonly Stack<int> FreeSlots = new();
    private static Slot?[] _slots = new Slot?[64];
    private static int _used;

    /// <summary>Registers <paramref name="target"/> and returns its new handle.</summary>
    public static nint Add(object target)
    {
        lock (Gate)
        {
            int index;
            uint generation = 1;
            if (FreeSlots.TryPop(out index))
            {
                generation = _slots[index]!.Generation;
            }
            else
            {
                if (_used == _slots.Length)
                {
                    // Readers may hold the old array; they still see every live slot in it.
                    var grown = new Slot?[_slots.Length * 2];
                    _slots.CopyTo(grown, 0);
                    Volatile.Write(ref _slots, grown);
                }
                index = _used++;
            }
            Volatile.Write(ref _slots[index], new Slot(target, generation));
            return (nint)(((ulong)generation << 32) | (uint)(index + 1));
        }
    }

    /// <summary>The live object of kind <typeparamref name="T"/> behind a handle; throws naming <paramref name="name"/> otherwise.</summary>
    public static T Get<T>(nint handle, string name) where T : class
    {
        object target = Find(handle, name).Target!;
        return target as T ?? throw new ArgumentException($"{name} is a {KindOf(target)} handle, not a {KindOf(typeof(T))}");
    }

    /// <summary>Frees a handle of kind <typeparamref name="T"/> and returns its object; a second free throws.</summary>
    public static T Remove<T>(nint handle, string name) where T : class
    {
        lock (Gate)
        {
            T target = Get<T>(handle, name);
            int index = (int)(uint)handle - 1;
            Volatile.Write(ref _slots[index], new Slot(null, unchecked(_slots[index]!.Generation + 1)));
            FreeSlots.Push(index);
            return target;
        }
    }

    private static Slot Find(nint handle, string name)
    {
        if (handle == 0)
        {
            throw new ArgumentException($"{name} is NULL");
        }
        ulong value = (ulong)handle;
        int index = (int)(uint)value - 1;
        Slot?[] slots = Volatile.Read(ref _slots);
        if ((uint)index < (uint)slots.Length && Volatile.Read(ref slots[index]) is { Target: not null } slot
            && slot.Generation == (uint)(value >> 32))
        {
            return slot;
        }
        throw new ArgumentException($"{name} is not a live handle: it was freed already, or it never came from this library");
    }

    private static string KindOf(object target) => KindOf(target.GetType());

    private static string KindOf(Type type) => type switch
    {
        _ when type == typeof(EngineHandle) => "moe_engine",
        _ when type == typeof(SessionHandle) => "moe_session",
        _ when type == typeof(LibraryHandle) => "moe_library",
        _ when type == typeof(Experts.AdaptedModule) => "moe_module",
        _ when typeof(Routing.Router).IsAssignableFrom(type) => "moe_router",
        _ => type.Name,
    };

    /// <summary>Immutable, so a reader sees a target and its generation together.</summary>
    private sealed record Slot(object? Target, uint Generation);
}
