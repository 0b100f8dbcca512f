// discoveryctl: placeholder until its issue lands.
#include <iostream>
int main() {
  std::cerr << "discoveryctl: not implemented yet\n";
  return 1;
}
