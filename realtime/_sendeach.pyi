from array import array

def send_each(table: array[int], slots: array[int],
              frame: bytes) -> list[tuple[int, int | None]] | None: ...
