"""One thread at a time imports transformers.

subtle: CPython holds a module's import lock while it imports that module's parent package, so
two threads importing parts of one package at once can each wait for the other. Python breaks
such a deadlock by handing one of them a half-imported module, and the import fails ("cannot
import name 'PreTokenizer' from partially initialized module 'tokenizers.pre_tokenizers'", seen
when the start's background load and the chat imported at the same moment). And a thread that
imports transformers while another runs its __init__ gets back the module object it found, which
that __init__ then replaces in sys.modules by its lazy module: it has none of the lazy names
("cannot import name 'AutoModelForCausalLM' from 'transformers'"). The app's start is
ready to chat before transformers is imported (core.models' fast start); then the background
load and the first sampled reply (core.sampling) both import it, and take turns here, as do
the other first imports of transformers (a hub model, the embedder, the WordPiece tokenizer).
A thread that takes both this and core.models.TRANSFORMERS_LOAD takes this one first.
"""

from __future__ import annotations

import threading

TRANSFORMERS_IMPORT = threading.RLock()
