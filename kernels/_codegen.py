"""Machine code only for functions that run: a helper kernel's library is linked, never finalized.

Numba finalizes every compiled function's LLVM library as if it would run: it links in the
callees' code, optimizes the whole module at O3 and emits machine code for it. A helper that
only other kernels call (``jit``, no Python wrapper) never runs on its own: each caller links
its IR and optimizes and emits it again, so that work is done for nothing at every level of the
call tree (the helpers of a compiled RNN step spent about a third of the step's LLVM time on
it; docs/benchmarks.md, "Machine code only for what runs").

``LazyLibrary`` replaces Numba's JIT code library in this process. Its ``finalize`` links the
callees in (what a caller needs) and stops; the module passes and the machine code come at the
first request for the address of a function the library defines (an entry kernel's Python
wrapper, a row kernel's address for the dispatch table). A helper is never asked for one: the
address Numba asks of it at compile time is its Python wrapper's, which it does not have.

The kernel cache (``_jit.CheckedFunctionCache``) saves a library that has no machine code as
its linkable IR alone (kind ``"linkonly"``), which ``LazyLibrary._unserialize`` reads back; a
row kernel is made to emit its code before it is saved, so that loading it costs no compile.
Every other Numba user in the process keeps Numba's behaviour: a function with a wrapper gets
its machine code when Numba asks for the wrapper, as before, and only fastgrad's cache writes
the new kind.
"""

import llvmlite.binding as ll
from numba.core import codegen as _numba_codegen
from numba.core.environment import lookup_environment
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import cpu_target

__all__ = ["LINK_ONLY", "LazyLibrary", "install"]

LINK_ONLY = "linkonly"  # the serialization kind of a library without machine code


class LazyLibrary(_numba_codegen.JITCodeLibrary):
    """A JIT code library whose module passes and machine code wait for a caller that runs it.
    """

    def __init__(self, codegen, name):
        super().__init__(codegen, name)
        self._has_machine_code = False
        self._loaded_link_only = False
        self.link_only_allowed = False  # set by fastgrad's cache before it serializes

    def finalize(self):
        """Link the callees in; no module passes, no machine code (``_emit`` does those)."""
        _numba_codegen.require_global_compiler_lock()
        self._codegen._check_llvm_bugs()
        self._raise_if_finalized()
        seen = set()
        for library in self._linking_libraries:
            if library not in seen:
                self._reload_init.update(library._reload_init)
                seen.add(library)
                self._final_module.link_in(library._get_module_for_linking(), preserve=True)
        # Numba's cache refuses a function whose code holds a process's addresses: the test
        # reads these, which Numba collects when it emits
        self._finalize_dynamic_globals()
        self._finalized = True

    def _emit(self):
        """What Numba's ``finalize`` does after linking: the module passes (cheap, then full,
        at the codegen's level), then the module into the engine and its machine code."""
        with global_compiler_lock:
            if self._has_machine_code:
                return
            self._has_machine_code = True  # Numba's finalize may ask for the assembly (below)
            if self._loaded_link_only:  # loaded as linkable IR: the engine gets a copy (the
                # shared module stays for linking) compiled as it is, its unused functions kept
                self._final_module = self._shared_module.clone()
            else:
                self._optimize_final_module()
            self._final_module.verify()
            self._finalize_final_module()
            self._set_environments()

    def _set_environments(self):
        """Numba points each function's environment global at its Environment when it
        compiles it; a helper's is set here, in the module that runs it (each caller's copy
        of the global included), for a helper that reads it (``print``, a raise with runtime
        values, ``objmode``)."""
        for gv in self._final_module.global_variables:
            if gv.name.startswith("_ZN08NumbaEnv") and not gv.is_declaration:
                env = lookup_environment(gv.name)
                if env is not None:
                    self._codegen.set_env(gv.name, env)

    def _defines(self, name):
        try:
            function = self._final_module.get_function(name)
        except NameError:
            return False
        return not function.is_declaration

    def get_pointer_to_function(self, name):
        """The address of ``name``, compiling the library's machine code first; 0 (and nothing
        compiled) when the library does not define ``name``."""
        with global_compiler_lock:
            self._ensure_finalized()
            if not self._has_machine_code:
                if not self._defines(name):
                    return 0
                self._emit()
            return super().get_pointer_to_function(name)

    def emit(self):
        """Compile the library's machine code now (a row kernel's, before the cache saves
        it), if it has none."""
        with global_compiler_lock:
            self._ensure_finalized()
            self._emit()

    def serialize_using_object_code(self):
        if self._has_machine_code or not self.link_only_allowed:
            self.emit()
            return super().serialize_using_object_code()
        return (self.name, LINK_ONLY, self._get_module_for_linking().as_bitcode())

    @classmethod
    def _unserialize(cls, codegen, state):
        name, kind, data = state
        if kind != LINK_ONLY:
            self = super()._unserialize(codegen, state)
            self._has_machine_code = True
            return self
        self = codegen.create_library(name)
        self._final_module = ll.parse_bitcode(data)
        self._shared_module = self._final_module
        self._loaded_link_only = True
        self._finalized = True
        return self

    # Numba's inspection of a finalized library, for one that has no code yet (a helper's
    # ``inspect_llvm`` shows its IR before the module passes: its callers run them)
    def get_asm_str(self):
        self.emit()
        return super().get_asm_str()


def _set_env_if_emitted(codegen):
    """Numba stores a function's environment in its module's global at compile time; a library
    without machine code has no such global in the engine (and no kernel reads it)."""
    set_env = codegen.set_env

    def guarded(env_name, env):
        if codegen._engine.is_symbol_defined(env_name):
            set_env(env_name, env)

    codegen.set_env = guarded


def install():
    """Make the process's CPU code generator create ``LazyLibrary`` objects (idempotent)."""
    codegen = cpu_target.target_context.codegen()
    if codegen._library_class is not LazyLibrary:
        codegen._library_class = LazyLibrary
        _set_env_if_emitted(codegen)
