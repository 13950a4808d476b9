"""Built-in passes of spa-compiler: normalizations and importance criteria.

They register with :mod:`spa_compiler.registry` exactly as a third-party
package would (entry-point group ``spa_compiler.passes``).
"""
